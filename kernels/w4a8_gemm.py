"""Fused W4A8 GEMM (Triton): y[M, N] = dequant(x_q[M, K] . unpack(w)[K, N]) + bias.

Weights stay int4 in memory (kernel layout from `packing.pack_w4a8`, int8 [N, K_pad/2]); each
K step loads one byte tile [BLOCK_N, BLOCK_K/2] and splits it into two int8 tiles of 16 * q in
registers, four bytes an instruction (`sixteen_nibbles`), which feed two int8 x int8 -> int32
tensor-core dots against the matching halves of the activation tile. The product is computed transposed (W . x^T), so the
unpacked weight is the A operand, which wgmma can read from registers. Scales are applied in fp32:
- per channel (group_size -1): int32 accumulation, s_x[m] * s_w[n] in the epilogue;
- per group (32/64/128): each group's int32 partial sum is scaled by s_w[g, n] before it joins
  the fp32 accumulator (BLOCK_K <= group size; for groups of 32, the two dot halves are the two
  groups of a 64-wide step).

Two launch strategies, chosen by M:
- decode (M <= 16): BLOCK_M = 16 and split-K, so that a GEMV-shaped problem still puts a few
  hundred programs on 132 SMs (weight bandwidth is the whole cost). Splits write fp32 partials
  that a second kernel sums in a fixed order (split_k.py);
- prefill (M > 16): classic tiled GEMM, grouped program order for L2 reuse of weight tiles.
For M <= 4 the candidates also hold the dp4a GEMV of w4a8_gemv.py (CUDA cores, no MMA padding),
which the autotuner picked on every Qwen3 layer of the H100 at M = 1 and 4; from M = 256 on they
also hold the unpack + int8 GEMM of w4a8_unpacked.py (H100, M >= 1024: 1.2-1.3x this kernel per
group, 1.7-2.0x per channel).
Configs come from `autotune.pick_config`, keyed on bucketed M and cached per GPU name.
"""

import functools
import itertools
import weakref

import torch
import triton
import triton.language as tl

from .act_quant import _per_token_quant_int8_kernel, per_token_quant_int8, quant_launch_params
from .autotune import GRAPH_CALLS, interpreting, m_bucket, pick_config
from .launch import Launcher
from .packing import padded_k
from .pdl import pdl, pdl_enter
from .reference import check_group_size
from .split_k import _split_k_reduce_kernel, reduce_split_k, split_range, store_tile
from .w4a8_gemv import GEMV_MAX_M, _w4a8_gemv_kernel, gemv_configs, gemv_grid, is_gemv, launch_gemv
from .w4a8_unpacked import (MAX_K_PER_CHANNEL, UNPACK_MIN_M, is_unpacked, launch_unpacked, sixteen_nibbles,
                            unpacked_configs)
from .w8a8_gemm import grouped_tile

DECODE_MAX_M = 16
TUNE_ROTATE_BYTES = 128 << 20  # > 2x the 50-60 MB L2 of H100/H200


@triton.jit
def w4a8_tile(x_col, stride_xk, mask_m, w_row, stride_wb, ws_n, stride_sg, mask_n, K, K_HALF, it_start, it_end,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """acc[BLOCK_N, BLOCK_M] (fp32) = W . x^T over the K steps [it_start, it_end), weight scales
    applied, activation scales not. x_col: x_q pointers of the tile's M rows [1, BLOCK_M]; w_row:
    packed weight rows [BLOCK_N, 1]; ws_n: the scale pointers of group 0 for the tile's N [BLOCK_N]."""
    offs_b = tl.arange(0, BLOCK_K // 2)  # packed bytes of one K step
    acc_i = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32)
    acc_f = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for it in range(it_start, it_end):
        k_lo = it * (BLOCK_K // 2) + offs_b  # low nibbles: k in [0, K_pad/2)
        k_hi = K_HALF + k_lo  # high nibbles: k in [K_pad/2, K_pad)
        x_lo = tl.load(x_col + k_lo[:, None] * stride_xk, mask=mask_m[None, :] & (k_lo[:, None] < K), other=0)
        x_hi = tl.load(x_col + k_hi[:, None] * stride_xk, mask=mask_m[None, :] & (k_hi[:, None] < K), other=0)
        w = tl.load(w_row + k_lo[None, :] * stride_wb, mask=mask_n[:, None] & (k_lo[None, :] < K_HALF), other=0,
                    eviction_policy="evict_first")  # each weight byte is read once per M block
        w_lo, w_hi = sixteen_nibbles(w)
        if GROUP_SIZE == 0:
            acc_i = tl.dot(w_lo, x_lo, acc_i, out_dtype=tl.int32)
            acc_i = tl.dot(w_hi, x_hi, acc_i, out_dtype=tl.int32)
        else:  # BLOCK_K / 2 <= GROUP_SIZE: each half lies in one group; K_HALF starts a group
            g_lo = (it * (BLOCK_K // 2)) // GROUP_SIZE
            s_lo = tl.load(ws_n + g_lo * stride_sg, mask=mask_n, other=0.0)
            hi_ok = (K_HALF + it * (BLOCK_K // 2) + 0 * mask_n.to(tl.int32)) < K  # padded groups have no scale
            s_hi = tl.load(ws_n + (g_lo + K_HALF // GROUP_SIZE) * stride_sg, mask=mask_n & hi_ok, other=0.0)
            acc_f += tl.dot(w_lo, x_lo, out_dtype=tl.int32).to(tl.float32) * s_lo[:, None]
            acc_f += tl.dot(w_hi, x_hi, out_dtype=tl.int32).to(tl.float32) * s_hi[:, None]
    if GROUP_SIZE == 0:
        acc_f = acc_i.to(tl.float32) * tl.load(ws_n, mask=mask_n, other=0.0)[:, None]
    return acc_f * 0.0625  # the dots read 16 * q (sixteen_nibbles); exact, so the bits of q's sums


@triton.jit
def _w4a8_gemm_kernel(
    # pointers
    xq_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr,
    # sizes
    M, N, K, K_HALF,  # K_HALF = K_pad / 2: bytes per packed weight row, first k of the high nibbles
    # strides
    stride_xm, stride_xk, stride_xsm,
    stride_wn, stride_wb,
    stride_sg, stride_sn,
    stride_os, stride_om, stride_on,  # stride_os: between split-K partials
    stride_rm,  # the residual's rows (unit inner stride)
    # quant params
    GROUP_SIZE: tl.constexpr,  # 0 = per output channel
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_N: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    # Computed transposed, acc[BLOCK_N, BLOCK_M] = W . x^T: the unpacked weight is the MMA's A
    # operand, which wgmma may take from registers, while x^T streams through shared memory.
    # This also lets decode use BLOCK_M = 16 (wgmma needs 64 rows only on the A side).
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    # GROUP_N weight tiles per x tile: programs running together share x tiles in L2
    pid_n, pid_m = grouped_tile(pid, tl.cdiv(N, BLOCK_N), tl.cdiv(M, BLOCK_M), GROUP_N)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_col = xq_ptr + offs_m[None, :] * stride_xm
    w_row = w_ptr + offs_n[:, None] * stride_wn

    it_start, it_end = split_range(tl.cdiv(K_HALF, BLOCK_K // 2), SPLIT_K)
    acc = w4a8_tile(x_col, stride_xk, mask_m, w_row, stride_wb, ws_ptr + offs_n * stride_sn, stride_sg, mask_n,
                    K, K_HALF, it_start, it_end, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SIZE)
    x_scale = tl.load(xs_ptr + offs_m * stride_xsm, mask=mask_m, other=0.0)
    out = acc * x_scale[None, :]
    out_ptrs = out_ptr + pid_k * stride_os + offs_m[None, :] * stride_om + offs_n[:, None] * stride_on
    res_ptrs = res_ptr + offs_m[None, :] * stride_rm + offs_n[:, None]
    store_tile(out, out_ptr, out_ptrs, mask_n[:, None] & mask_m[None, :], bias_ptr, offs_n, mask_n, res_ptrs,
               HAS_BIAS, HAS_RESIDUAL, SPLIT_K)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: small splits keep the CPU tests fast but still exercise split-K


@functools.lru_cache(maxsize=4096)
def candidate_configs(m: int, n: int, k: int, group_size: int, sms: int) -> list[dict]:
    """Launch configs worth timing for this problem on a GPU of `sms` SMs (`sm_count`); the
    first is the untuned default."""
    bk_max = 512 if group_size == -1 else 2 * group_size  # each half of a step within one group
    k_pad = padded_k(k, group_size)
    configs = []
    gemv = gemv_configs(m, n, k_pad, group_size, sms) if m <= GEMV_MAX_M and k % 4 == 0 else []
    # The dp4a GEMV (w4a8_gemv.py) won at M <= 4 on every Qwen3 layer on the H100: first on a GPU.
    # The interpreter runs programs one by one in Python, and the GEMV's many small programs made
    # the CPU test suite's decoding 4x slower: there the tensor-core tile stays the default.
    if not interpreting():
        configs += gemv
    if m <= DECODE_MAX_M:
        # Measured on an H100 (8B/32B layers, M = 1..16): BLOCK_N = 64 with 128-byte K steps
        # led everywhere; split-K matters only where N / 64 leaves SMs idle.
        for bn, bk in ((64, 256), (64, 512), (128, 256), (128, 512), (256, 256)):
            bk = min(bk, bk_max)
            n_iters = triton.cdiv(k_pad, bk)
            want = max(1, 2 * sms // triton.cdiv(n, bn))  # ~2 waves of programs
            default_split = min(16, n_iters, triton.next_power_of_2(want))
            for split in [default_split] + [s for s in (1, 2, 4, 8, 16) if s != default_split and s <= n_iters]:
                config = dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, GROUP_N=1, num_warps=4, num_stages=3)
                if config not in configs:
                    configs.append(config)
        return configs + (gemv if interpreting() else [])
    tiles = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_N is wgmma's M side
        (128, 64, 256, 4, 3), (128, 128, 128, 4, 4), (128, 128, 256, 8, 4), (128, 128, 256, 8, 3),
        (256, 128, 128, 8, 3), (64, 128, 256, 4, 4), (64, 64, 256, 4, 4), (32, 128, 256, 4, 4),
        (128, 256, 128, 8, 3), (32, 64, 512, 4, 4),
    ]
    if m <= 64:  # small prefill: small BLOCK_M first
        tiles.sort(key=lambda t: t[0])
    seen = set()
    for bm, bn, bk, warps, stages in tiles:
        bk = min(bk, bk_max)
        if (bm, bn, bk, warps, stages) in seen:
            continue
        seen.add((bm, bn, bk, warps, stages))
        configs.append(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, GROUP_N=8,
                            num_warps=warps, num_stages=stages))
    return configs + (unpacked_configs(group_size) if m >= UNPACK_MIN_M else [])


def _launch(x_q, x_scale, packed_w, w_scale, bias, group_size, out_dtype, config, residual=None) -> torch.Tensor:
    m, k = x_q.shape
    n = packed_w.shape[0]
    split = config["SPLIT_K"]
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    target = out if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=x_q.device)
    tile_residual = residual if split == 1 else None  # else added by the reduction
    if is_gemv(config):
        launch_gemv(x_q, x_scale, packed_w, w_scale, bias, group_size, target, config, tile_residual)
    elif is_unpacked(config):
        launch_unpacked(x_q, x_scale, packed_w, w_scale, bias, group_size, target, config, tile_residual)
    else:
        _w4a8_gemm_kernel[(triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), split)](
            x_q, x_scale, packed_w, w_scale, bias if bias is not None else w_scale,
            tile_residual if tile_residual is not None else target, target,
            m, n, k, packed_w.shape[1],
            x_q.stride(0), x_q.stride(1), x_scale.stride(0),
            packed_w.stride(0), packed_w.stride(1),
            w_scale.stride(0), w_scale.stride(1),
            0 if split == 1 else target.stride(0), target.stride(-2), target.stride(-1),
            tile_residual.stride(0) if tile_residual is not None else 0,
            GROUP_SIZE=max(group_size, 0), HAS_BIAS=bias is not None, HAS_RESIDUAL=tile_residual is not None,
            **config, **pdl(x_q.device, early=False),
        )
    if split > 1:
        reduce_split_k(target, bias, out, residual)
    return out


def tuned_config(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None, group_size: int, out_dtype: torch.dtype) -> dict:
    """The autotuned launch config for this problem (keyed on N, K, group, bucketed M, dtype)."""
    (m, k), n = x_q.shape, packed_w.shape[0]
    key = f"w4a8|N{n}|K{k}|g{group_size}|M{m_bucket(m)}|{out_dtype}"
    candidates = candidate_configs(m_bucket(m), n, k, group_size, sm_count(x_q.device))
    weights, turn = [], itertools.count()

    def launch(config: dict) -> None:  # only called when tuning: a cache hit makes no copies
        if not weights:
            weights.append((packed_w, w_scale))
            if m <= DECODE_MAX_M and x_q.is_cuda:
                # Decode reads each weight from HBM once per step; a layer smaller than L2 timed on
                # one copy would be timed from cache. The timed graph rotates over copies instead.
                copies = min(GRAPH_CALLS, -(-TUNE_ROTATE_BYTES // packed_w.numel())) - 1
                weights.extend((packed_w.clone(), w_scale.clone()) for _ in range(copies))
        _launch(x_q, x_scale, *weights[next(turn) % len(weights)], bias, group_size, out_dtype, config)

    return pick_config(key, candidates, launch, x_q.device)


def _check(x: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor, group_size: int,
           bias: torch.Tensor | None) -> None:
    if x.dim() != 2:
        raise ValueError(f"w4a8_gemm takes x [M, K], got shape {tuple(x.shape)}")
    k = x.shape[1]
    check_group_size(k, group_size)
    if group_size == -1 and k > MAX_K_PER_CHANNEL:
        raise ValueError(f"w4a8_gemm per channel takes K <= {MAX_K_PER_CHANNEL} (its int32 sums of 16 q * x), got K={k}; "
                         "use groups")
    k_half = padded_k(k, group_size) // 2
    if packed_w.dtype != torch.int8 or packed_w.dim() != 2 or packed_w.shape[1] != k_half:
        raise ValueError(f"packed_w must be int8 [N, {k_half}] for K={k}, group_size={group_size} (pack_w4a8), "
                         f"got {packed_w.dtype} {tuple(packed_w.shape)}")
    n = packed_w.shape[0]
    n_groups = 1 if group_size == -1 else k // group_size
    if tuple(w_scale.shape) != (n_groups, n) or w_scale.dtype != torch.float32:
        raise ValueError(f"w_scale must be fp32 [{n_groups}, {n}] for K={k}, group_size={group_size}, "
                         f"got {w_scale.dtype} {tuple(w_scale.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def w4a8_gemm(x: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor, group_size: int = -1,
              bias: torch.Tensor | None = None, *, x_scale: torch.Tensor | None = None,
              out_dtype: torch.dtype | None = None, config: dict | None = None,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """W4A8 linear: x [M, K] times int4 weights, returns [M, N] (+ residual).

    x: bf16/fp16/fp32 activations (quantized per token here), or int8 x_q with `x_scale`
       fp32 [M, 1] from `per_token_quant_int8`.
    packed_w: int8 [N, K_pad/2] from `packing.pack_w4a8` (or `repack_awq` / `repack_ct`).
    w_scale: fp32 [G, N], G = 1 per channel or K / group_size.
    bias: [N] or None. out_dtype defaults to x's dtype (bf16 for int8 input).
    config: launch config for tests and benchmarks; autotuned when None.
    residual: [M, N] out_dtype, unit inner stride, added where the result is stored: the bits of
       `residual + w4a8_gemm(...)` in torch, without that launch.
    """
    _check(x, packed_w, w_scale, group_size, bias)
    m = x.shape[0]
    n = packed_w.shape[0]
    if x.dtype == torch.int8:
        if x_scale is None:
            raise ValueError("int8 x needs x_scale [M, 1] from per_token_quant_int8")
        x_q, out_dtype = x, out_dtype or torch.bfloat16
    else:
        x_q, x_scale = per_token_quant_int8(x)
        out_dtype = out_dtype or x.dtype
    if m == 0:
        return torch.empty((0, n), dtype=out_dtype, device=x.device)
    check_residual(residual, m, n, out_dtype)
    if config is None:
        config = tuned_config(x_q, x_scale, packed_w, w_scale, bias, group_size, out_dtype)
    return _launch(x_q, x_scale, packed_w, w_scale, bias, group_size, out_dtype, config, residual)


def check_residual(residual: torch.Tensor | None, m: int, n: int, dtype: torch.dtype) -> None:
    if residual is not None and (tuple(residual.shape) != (m, n) or residual.dtype != dtype
                                 or residual.stride(1) != 1):
        raise ValueError(f"residual must be {dtype} [{m}, {n}] with unit inner stride, "
                         f"got {residual.dtype} {tuple(residual.shape)} strides {residual.stride()}")


class DecodePlan:
    """One W4A8 linear at one decode M (<= DECODE_MAX_M) and input dtype: the activation
    quantization, GEMM and split-K reduction with everything but the tensors fixed, launched
    through `launch.Launcher` (see launch.py for why: per-call Python, not the GPU, was the cost
    of HF eager decoding). Measured before on the H100 host: W4A8Linear.forward at M=1 took
    136-290 us of CPU per call (quantization 32-70, argument checks and key ~30, gemm 30-52 and
    reduce 17-32 through the JIT, 4 allocations 8-19) for 14-71 us of GPU.
    With the plan: 85-100 us at M=1 and 16 (K=4096), against 193-206 us for `w4a8_gemm` and 27-44 us
    for nn.Linear bf16 in the same run.

    Valid while the layer holds the same weight tensors (weakrefs, so that `.to()` or a reload
    builds a new plan and no old weights are kept alive) and for inputs laid out like the first:
    contiguous [m, k], 16-byte aligned (`holds`, `accepts`); anything else takes `w4a8_gemm`.
    """

    def __init__(self, m: int, k: int, x_dtype: torch.dtype, packed_w: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None, group_size: int, config: dict):
        n, self.k_half = packed_w.shape
        self.m, self.k, self.n, self.x_dtype, self.device = m, k, n, x_dtype, packed_w.device
        self.refs = (weakref.ref(packed_w), weakref.ref(w_scale), weakref.ref(bias) if bias is not None else None)
        self.w_strides = (*packed_w.stride(), *w_scale.stride())
        launch = pdl(self.device)
        block_m, block_k, warps = quant_launch_params(m, k)
        self.quant_grid = (triton.cdiv(m, block_m), 1, 1)  # Launcher grids have 3 entries
        self.quant = Launcher(_per_token_quant_int8_kernel, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps,
                              **launch)
        self.split = config["SPLIT_K"]
        self.gemv = is_gemv(config)
        # [without, with] a residual: where it is added (the tile store, or the split-K reduction)
        # is a constexpr of the kernel
        if self.gemv:
            self.grid = gemv_grid(n, config)
            self.gemv_meta = dict(GROUP_SIZE=max(group_size, 0), HAS_BIAS=bias is not None, ASM=not interpreting(),
                                  **config, **launch)
            self.gemm = [Launcher(_w4a8_gemv_kernel, HAS_RESIDUAL=res and self.split == 1, X_FLOAT=False, N_ABSMAX=1,
                                  BLOCK_C=1, **self.gemv_meta) for res in (False, True)]
            self.float_gemv: dict[tuple[bool, int], Launcher] = {}  # (residual, absmax partials) -> launcher
        else:
            self.grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]), self.split, 1)
            self.gemm = [Launcher(_w4a8_gemm_kernel, GROUP_SIZE=max(group_size, 0), HAS_BIAS=bias is not None,
                                  HAS_RESIDUAL=res and self.split == 1, **config, **pdl(self.device, early=False))
                         for res in (False, True)]
        self.reduce_grid = (m, triton.cdiv(n, 256), 1)
        self.reduce = [Launcher(_split_k_reduce_kernel, HAS_BIAS=bias is not None, HAS_RESIDUAL=res,
                                SPLIT_K=self.split, BLOCK_N=256, **launch) for res in (False, True)]

    def holds(self, packed_w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """The weight tensors this plan was made for (by identity)."""
        r_w, r_s, r_b = self.refs
        return r_w() is packed_w and r_s() is w_scale and (r_b() if r_b is not None else None) is bias

    def accepts(self, x: torch.Tensor) -> bool:
        """x laid out as the plan's kernels were specialized: contiguous [m, k], 16-byte aligned."""
        return x.stride() == (self.k, 1) and x.data_ptr() % 16 == 0 and x.dtype == self.x_dtype

    def __call__(self, x: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                 bias: torch.Tensor | None, residual: torch.Tensor | None = None,
                 partials: bool = False) -> torch.Tensor:
        m, k, dev = self.m, self.k, self.device
        # the same arguments, in the same order and form, as per_token_quant_int8 and _launch pass
        x_q = torch.empty((m, k), dtype=torch.int8, device=dev)
        x_scale = torch.empty((m, 1), dtype=torch.float32, device=dev)
        self.quant(self.quant_grid, x, x_q, x_scale, m, k, k, 1, k, 1)
        return self.quantized(x_q, x_scale, packed_w, w_scale, bias, residual, partials)

    def quantized(self, x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, residual: torch.Tensor | None = None,
                  partials: bool = False) -> torch.Tensor:
        """The GEMM (and reduction) for x_q int8 [m, k] contiguous, x_scale fp32 [m, 1] (or, on a
        GEMV plan, float rows [m, k] accepted by `accepts` with their absmax partials [m, C]
        contiguous: quantized as the GEMV loads them); `residual` [m, n] in the plan's dtype,
        contiguous (`accepts_residual`), is added to the result. With `partials` (no bias, no
        residual) a plan that splits K returns its fp32 partials [SPLIT_K, m, n] unsummed, for a
        consumer that sums them as the reduction would (`split_k.load_summed`)."""
        m, n, k, dev = self.m, self.n, self.k, self.device
        out = torch.empty((m, n), dtype=self.x_dtype, device=dev)
        target = out if self.split == 1 else torch.empty((self.split, m, n), dtype=torch.float32, device=dev)
        stride_os = 0 if self.split == 1 else m * n
        bias_arg = bias if bias is not None else w_scale
        res = residual is not None
        tile_res = residual if res and self.split == 1 else target
        sw0, sw1, ss0, ss1 = self.w_strides
        if self.gemv and x_q.is_floating_point():
            c = x_scale.shape[1]
            gemv = self.float_gemv.get((res, c))
            if gemv is None:
                gemv = self.float_gemv[(res, c)] = Launcher(
                    _w4a8_gemv_kernel, HAS_RESIDUAL=res and self.split == 1, X_FLOAT=True, N_ABSMAX=c,
                    BLOCK_C=triton.next_power_of_2(c), **self.gemv_meta)
            gemv(self.grid, x_q, x_scale, packed_w.view(torch.int32), w_scale, bias_arg, tile_res, target,
                 m, n, self.k_half // 4, k // 4, k, c, sw0 // 4, ss0, ss1, stride_os, n, n)
        elif self.gemv:  # the int32-word views launch_gemv passes
            self.gemm[res](self.grid, x_q.view(torch.int32), x_scale, packed_w.view(torch.int32), w_scale, bias_arg,
                           tile_res, target, m, n, self.k_half // 4, k // 4, k // 4, 1, sw0 // 4, ss0, ss1,
                           stride_os, n, n)
        else:
            self.gemm[res](self.grid, x_q, x_scale, packed_w, w_scale, bias_arg, tile_res, target,
                           m, n, k, self.k_half, k, 1, 1, sw0, sw1, ss0, ss1, stride_os, n, 1, n)
        if self.split > 1 and partials and bias is None and not res:
            return target
        if self.split > 1:
            self.reduce[res](self.reduce_grid, target, bias if bias is not None else target,
                             residual if res else target, out, m, n, m * n, n, n, n, 1)
        return out

    def accepts_residual(self, residual: torch.Tensor) -> bool:
        """residual laid out as `quantized` takes it: [m, n] contiguous in the plan's dtype, 16-byte aligned."""
        return (residual.shape == (self.m, self.n) and residual.stride() == (self.n, 1)
                and residual.dtype == self.x_dtype and residual.data_ptr() % 16 == 0)


def decode_plan(x: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor, group_size: int,
                bias: torch.Tensor | None) -> DecodePlan:
    """A `DecodePlan` for x [m <= DECODE_MAX_M, K] (checked like `w4a8_gemm`; tunes on first use)."""
    m, k = x.shape
    if not (0 < m <= DECODE_MAX_M) or x.dtype == torch.int8:
        raise ValueError(f"decode_plan takes float x [M <= {DECODE_MAX_M}, K], got {x.dtype} {tuple(x.shape)}")
    _check(x, packed_w, w_scale, group_size, bias)
    x_q, x_scale = per_token_quant_int8(x)
    config = tuned_config(x_q, x_scale, packed_w, w_scale, bias, group_size, x.dtype)
    return DecodePlan(m, k, x.dtype, packed_w, w_scale, bias, group_size, config)
