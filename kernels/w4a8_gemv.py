"""W4A8 GEMV (Triton) for decode batches of 1-4 rows: int4 weights against int8 activations on
the CUDA cores, four products per `dp4a` instruction.

Why not the tensor-core kernel (w4a8_gemm.py) at M = 1: its MMA tiles need 16 activation rows,
so 15 of 16 are padding, and each K step's int32 product must finish before its group scale
applies, which serializes the MMAs with the loads; at M = 1 it read the weights at 20-34% of
the H100's HBM bandwidth (README, kernels table). A GEMV only has to keep loads in flight.

Arithmetic, on 32-bit words of the kernel layout (packing.py: byte j of a row holds k = j in its
low nibble and k = K_pad/2 + j in its high nibble): for a word w of 4 bytes,
- `(w << 4) & 0xF0F0F0F0` puts each low nibble in the high half of its byte: as int8 that byte
  is 16 * q (the sign bit lands where int8 wants it), for the 4 k's x_q's word j holds;
- `w & 0xF0F0F0F0` does the same for the high nibbles, against x_q's word K_pad/8 + j;
- `dp4a(a, b, c)` = c + sum of the 4 signed byte products, exact in int32 (|16q * x| <= 2^14,
  so even K = 32768 per channel stays below 2^31);
and the epilogue multiplies by 1/16 (exact in fp32). Per group, each K step covers at most one
group per half (BLOCK_W * 4 <= group size) and its int32 sums are scaled before they join the
fp32 accumulator, as in the GEMM.

Bytes in flight: built for sm_90a (compile_check.py), a step of the default tile (16 rows x 32
words, 4 warps) is one 16-byte weight load per thread, consumed by that step's dp4a, so a thread
has one load in flight. Qwen3-8B's qkv at M = 1 is 384 programs of 128 threads: at most 0.8 MB in
flight, where 3.35 TB/s at ~0.7 us of loaded HBM latency needs ~2.3 MB (Little's law), which fits
the 31% of HBM it reached (README kernels table). Each tile is therefore also a candidate with
W_STAGES = 3: `tl.range(num_stages=3)` pipelines the loads through shared memory (cp.async,
LDGSTS in SASS), three steps in flight; the arithmetic, and so every bit of the result, is the
same. The autotuner times both; the untuned default stays the unpipelined tile, the one measured.

Under TRITON_INTERPRET there is no PTX: `dp4a` computes the same sum with shifts (ASM=False).
"""

import torch
import triton
import triton.language as tl

from .act_quant import quantize_by
from .autotune import interpreting
from .pdl import pdl, pdl_enter
from .split_k import split_range, store_tile

GEMV_MAX_M = 4
NIBBLES_HIGH = tl.constexpr(-252645136)  # 0xF0F0F0F0 as int32


@triton.jit
def dp4a(a, b, c, ASM: tl.constexpr):
    """c + the dot product of a's and b's 4 signed bytes (int32 tensors of one shape)."""
    if ASM:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        for i in tl.static_range(4):
            c += ((a << (24 - 8 * i)) >> 24) * ((b << (24 - 8 * i)) >> 24)
        return c


@triton.jit
def quantized_words(x_row, j, mask_j, scale):
    """int32 words [BLOCK_W] of the int8 values `quantize_by(x, scale)` of the floats at x_row[4j + c]
    (c = 0..3, byte c of word j, as x_q's words hold them); masked words are 0."""
    c = tl.arange(0, 4)
    x = tl.load(x_row + j[:, None] * 4 + c[None, :], mask=mask_j[:, None], other=0.0).to(tl.float32)
    q = quantize_by(x, scale).to(tl.int32) & 0xFF
    return tl.sum(q << (c * 8)[None, :], axis=1)  # disjoint bytes: the sum is their OR


@triton.jit
def gemv_tile(x_ptr, stride_xm, M, w_row, ws_n, stride_sg, mask_n, W_HALF, X_WORDS, it_start, it_end,
              GROUP_SIZE: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
              ASM: tl.constexpr, W_STAGES: tl.constexpr, x_scales=None, X_FLOAT: tl.constexpr = False):
    """acc [BLOCK_N, ROWS] fp32 = 16 * W . x^T over the K steps [it_start, it_end), weight scales
    applied, activation scales not. x_ptr: int32 words of x_q's row 0 (rows >= M read as 0), or
    with X_FLOAT the float row 0 itself, quantized as it loads by `x_scales` ([ROWS] or a scalar:
    each row's int8 scale, computed beforehand) to the words per_token_quant_int8 would give;
    w_row: word pointers of the tile's packed weight rows [BLOCK_N, 1]; ws_n: scale pointers of
    group 0 for the tile's N [BLOCK_N]. W_STAGES > 1 pipelines the loads (cp.async into shared
    memory, W_STAGES - 1 steps ahead); 1 loads each step's words in that step."""
    offs_w = tl.arange(0, BLOCK_W)
    rows = tl.arange(0, ROWS)
    acc = tl.zeros((BLOCK_N, ROWS), dtype=tl.float32)
    acc_i = tl.zeros((BLOCK_N, ROWS), dtype=tl.int32)
    zero = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.int32)
    for it in tl.range(it_start, it_end, num_stages=W_STAGES):
        j = it * BLOCK_W + offs_w  # word index within each half
        w = tl.load(w_row + j[None, :], mask=mask_n[:, None] & (j[None, :] < W_HALF), other=0,
                    eviction_policy="evict_first")
        lo = (w << 4) & NIBBLES_HIGH
        hi = w & NIBBLES_HIGH
        if GROUP_SIZE > 0:  # BLOCK_W * 4 <= GROUP_SIZE: each half of this step lies in one group
            g_lo = (it * BLOCK_W * 4) // GROUP_SIZE
            hi_ok = W_HALF + it * BLOCK_W + 0 * mask_n.to(tl.int32) < X_WORDS  # padded K has no scale
            s_lo = tl.load(ws_n + g_lo * stride_sg, mask=mask_n, other=0.0)
            s_hi = tl.load(ws_n + (g_lo + W_HALF * 4 // GROUP_SIZE) * stride_sg, mask=mask_n & hi_ok, other=0.0)
        for m in tl.static_range(ROWS):
            x_row = x_ptr + m * stride_xm
            row_ok = tl.full((BLOCK_W,), m, tl.int32) < M
            if X_FLOAT:
                scale_m = tl.sum(tl.where(rows == m, x_scales + tl.zeros((ROWS,), tl.float32), 0.0), axis=0)
                x_lo = quantized_words(x_row, j, (j < W_HALF) & row_ok, scale_m)
                x_hi = quantized_words(x_row + W_HALF * 4, j, (W_HALF + j < X_WORDS) & row_ok, scale_m)
            else:
                x_lo = tl.load(x_row + j, mask=(j < W_HALF) & row_ok, other=0)
                x_hi = tl.load(x_row + W_HALF + j, mask=(W_HALF + j < X_WORDS) & row_ok, other=0)
            x_lo = tl.broadcast_to(x_lo[None, :], (BLOCK_N, BLOCK_W))
            x_hi = tl.broadcast_to(x_hi[None, :], (BLOCK_N, BLOCK_W))
            if GROUP_SIZE > 0:
                part = (tl.sum(dp4a(lo, x_lo, zero, ASM), axis=1).to(tl.float32) * s_lo
                        + tl.sum(dp4a(hi, x_hi, zero, ASM), axis=1).to(tl.float32) * s_hi)
                acc += tl.where(rows[None, :] == m, part[:, None], 0.0)
            else:
                part_i = tl.sum(dp4a(hi, x_hi, dp4a(lo, x_lo, zero, ASM), ASM), axis=1)
                acc_i += tl.where(rows[None, :] == m, part_i[:, None], 0)
    if GROUP_SIZE == 0:
        acc = acc_i.to(tl.float32) * tl.load(ws_n, mask=mask_n, other=0.0)[:, None]
    return acc


@triton.jit
def _w4a8_gemv_kernel(
    # pointers (xq and w as int32 words)
    xq_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr,
    # sizes, in words: W_HALF = K_pad / 8 (words per packed row), X_WORDS = K / 4
    M, N, W_HALF, X_WORDS,
    # strides (xq and w in words)
    stride_xm, stride_xsm, stride_wn, stride_sg, stride_sn, stride_os, stride_om, stride_rm,
    # quant params
    GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    # meta-parameters
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, SPLIT_K: tl.constexpr,
    W_STAGES: tl.constexpr, ASM: tl.constexpr,
    # X_FLOAT: xq_ptr holds float rows (stride_xm in elements) and xs_ptr N_ABSMAX absmax partials
    # per row, quantized as they load (see gemv_tile)
    X_FLOAT: tl.constexpr = False, N_ABSMAX: tl.constexpr = 1, BLOCK_C: tl.constexpr = 1,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.arange(0, ROWS)
    mask_m = rows < M
    x_scale = tl.zeros((ROWS,), tl.float32)
    if X_FLOAT:
        offs_c = tl.arange(0, BLOCK_C)
        absmax = tl.load(xs_ptr + rows[:, None] * stride_xsm + offs_c[None, :],
                         mask=mask_m[:, None] & (offs_c[None, :] < N_ABSMAX), other=0.0)
        x_scale = tl.math.div_rn(tl.max(absmax, axis=1), 127.0)  # quantize_rows' scale, bit for bit
    it_start, it_end = split_range(tl.cdiv(W_HALF, BLOCK_W), SPLIT_K)
    acc = gemv_tile(xq_ptr, stride_xm, M, w_ptr + offs_n[:, None] * stride_wn, ws_ptr + offs_n * stride_sn,
                    stride_sg, mask_n, W_HALF, X_WORDS, it_start, it_end, GROUP_SIZE, ROWS, BLOCK_N, BLOCK_W, ASM,
                    W_STAGES, x_scale, X_FLOAT)
    if not X_FLOAT:  # loaded after the loop: held through it, it made M = 4 spill (sm_90a build)
        x_scale = tl.load(xs_ptr + rows * stride_xsm, mask=mask_m, other=0.0)
    out = acc * (x_scale * 0.0625)[None, :]  # 0.0625: the nibbles were read as 16 * q
    out_ptrs = out_ptr + pid_k * stride_os + rows[None, :] * stride_om + offs_n[:, None]
    res_ptrs = res_ptr + rows[None, :] * stride_rm + offs_n[:, None]
    store_tile(out, out_ptr, out_ptrs, mask_n[:, None] & mask_m[None, :], bias_ptr, offs_n, mask_n, res_ptrs,
               HAS_BIAS, HAS_RESIDUAL, SPLIT_K)


def is_gemv(config: dict) -> bool:
    return "BLOCK_W" in config


def gemv_configs(m: int, n: int, k_pad: int, group_size: int, sms: int) -> list[dict]:
    """Candidate launch configs for M <= GEMV_MAX_M, default first."""
    w_half = k_pad // 8
    bw_max = min(128 if group_size == -1 else group_size // 4, w_half)
    configs = []
    for bn, bw, warps in ((16, 32, 4), (32, 32, 4), (8, 64, 4), (16, 64, 4), (32, 16, 4), (64, 32, 8)):
        bw = min(bw, bw_max)
        n_iters = triton.cdiv(w_half, bw)
        want = max(1, 4 * sms // triton.cdiv(n, bn))  # ~4 programs per SM keep loads in flight
        default_split = min(16, n_iters, triton.next_power_of_2(want))
        for split in dict.fromkeys([default_split, 1, 2, 4, 8]):
            if split <= n_iters:
                config = dict(ROWS=triton.next_power_of_2(m), BLOCK_N=bn, BLOCK_W=bw, SPLIT_K=split, W_STAGES=1,
                              num_warps=warps, num_stages=3)
                if config not in configs:
                    configs.append(config)
    # the same tiles with their weight loads pipelined 2 steps ahead (see the module docstring)
    return configs + [dict(config, W_STAGES=3) for config in configs]


def gemv_grid(n: int, config: dict) -> tuple[int, int, int]:
    return triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"], 1


def word_view(x_q: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] (K % 4 == 0) as int32 words [M, K / 4], copied first if its rows are not word-aligned."""
    if x_q.stride(1) != 1 or x_q.stride(0) % 4 or x_q.storage_offset() % 4:
        x_q = x_q.contiguous()
    return x_q.view(torch.int32)


def launch_gemv(x_q, x_scale, packed_w, w_scale, bias, group_size, target, config, residual=None) -> None:
    """y (+ residual) or split partials into `target` ([M, N] out dtype, or fp32 [SPLIT_K, M, N])."""
    m, k = x_q.shape
    n, k_half = packed_w.shape
    xw = word_view(x_q)
    ww = packed_w.view(torch.int32)  # rows of K_pad/2 bytes, a multiple of 32
    _w4a8_gemv_kernel[gemv_grid(n, config)](
        xw, x_scale, ww, w_scale, bias if bias is not None else w_scale,
        residual if residual is not None else target, target,
        m, n, k_half // 4, k // 4,
        xw.stride(0), x_scale.stride(0), ww.stride(0), w_scale.stride(0), w_scale.stride(1),
        target.stride(0) if config["SPLIT_K"] > 1 else 0, target.stride(-2),
        residual.stride(0) if residual is not None else 0,
        GROUP_SIZE=max(group_size, 0), HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        ASM=not interpreting(), **config, **pdl(target.device),
    )
