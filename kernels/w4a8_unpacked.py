"""Prefill path of the W4A8 GEMM: unpack the int4 weights to an int8 scratch, then an int8 x int8
tensor-core GEMM whose both operands stream through shared memory.

Why two kernels beat the fused one at large M: the fused kernel (w4a8_gemm.py) unpacks each
weight tile in registers and hands it to wgmma as the register operand, which serializes every K
step (`warp_group_dot_wait 0`). Unpacked once per call, the weight is a plain int8 [N, K_pad]
matrix that the software pipeline prefetches like any GEMM operand. `python -m kernels.benchmark
--m 256,1024,4096` times both paths side by side (its fused and unpacked columns; README,
"Prefill: unpack, then an int8 GEMM"): on an H100 at M = 1024 and 4096, the Qwen3-8B/32B layers,
activation quantization included, per group of 128 the unpacked path ran 1.18-1.36x faster than
the fused kernel (0.63-0.90x cuBLAS bf16), per channel 1.29-1.55x (1.20-1.57x bf16 at M = 4096);
an earlier development run timed the GEMM alone at 1.42-1.70x the fused kernel per group. The
unpack reads N * K_pad / 2 bytes and writes N * K_pad int8 of 16 q (`sixteen_nibbles`, as the fused
tile reads them; 56 us for 8B gate_up, ~2.7 TB/s, timed before it went word-wise): 4% of that
GEMM at M = 4096, 17% at 1024, and it does not grow with M (vLLM's AWQ path dequantizes from 256
tokens on for the same reason; at M = 256 the fused tile still won on the big layers). The
autotuner (w4a8_gemm.candidate_configs) times these configs beside the fused tiles from M = 256
on and keeps whichever wins per shape.

Per group, each K step lies in one group (BLOCK_K <= group size) and its int32 partial is scaled
before joining the fp32 accumulator, in natural K order (the fused kernel adds the low- and
high-nibble halves of a step in turn: the same sums, another fp32 order, within the contract).

The scratch is allocated per call from torch's caching allocator (one layer's worth: 262 MB for
Qwen3-32B gate_up) and not kept: the model holds only the packed int4 weights. (The checks'
skipped-launch test would read a stale scratch as a GEMM done in torch; it never meets this path:
the checks call a GEMM on at most 64 rows, under UNPACK_MIN_M.)
"""

import torch
import triton
import triton.language as tl

from .autotune import interpreting
from .split_k import finish
from .w8a8_gemm import grouped_tile

UNPACK_MIN_M = 256  # below this the unpack (a few % of the GEMM at 1024) is not worth timing
UNPACK_BLOCK_N, UNPACK_BLOCK_B = 32, 256
MAX_K_PER_CHANNEL = 1 << 17  # |16 q * x| <= 128 * 127: 2^17 of them stay below 2^31 (sixteen_nibbles)
UNPACK_ASM = tl.constexpr(not interpreting())  # fixed at import, as the test suite sets TRITON_INTERPRET first


@triton.jit
def sixteen_nibbles(w):
    """int8 tiles 16 * (low nibbles), 16 * (high nibbles) of the packed bytes w (int8), each
    nibble moved to the high half of its byte, where int8 reads it signed.

    Word-wise on the GPU, 4 bytes per instruction: `(w << 4) & 0xF0F0F0F0`, `w & 0xF0F0F0F0`
    (pack=4 hands the asm 4 bytes of the tile in one register). Written as int8 shifts, LLVM
    splits each byte out, shifts, sign-extends and repacks it: sm_90a SASS of the M = 16 decode
    tile (BLOCK_N 64, BLOCK_K 256) had ~900 instructions a K step, 352 of them PRMT, for 64
    packed bytes a thread; the unpack kernel below, 352 PRMT for its 64 bytes a thread. The factor 16 is exact in int32 (K <= MAX_K_PER_CHANNEL) and
    in fp32, so each GEMM (w4a8_tile, the unpacked GEMM here) undoes it once, bit for bit."""
    if UNPACK_ASM:
        lo = tl.inline_asm_elementwise("{ .reg .b32 t; shl.b32 t, $1, 4; and.b32 $0, t, 0xF0F0F0F0; }",
                                       "=r,r", [w], dtype=tl.int8, is_pure=True, pack=4)
        hi = tl.inline_asm_elementwise("and.b32 $0, $1, 0xF0F0F0F0;", "=r,r", [w], dtype=tl.int8,
                                       is_pure=True, pack=4)
    else:  # the interpreter has no PTX: the same bytes, one at a time (int8 wraps: 16 * q)
        lo = w << 4
        hi = w & -16
    return lo, hi


@triton.jit
def _unpack_int4_kernel(w_ptr, out_ptr, N, K_HALF, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """packed int8 [N, K_HALF] (low nibble k, high nibble K_HALF + k) -> int8 [N, 2 * K_HALF] of 16 q."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask = (offs_n[:, None] < N) & (offs_b[None, :] < K_HALF)
    w = tl.load(w_ptr + offs_n[:, None] * K_HALF + offs_b[None, :], mask=mask)
    dst = out_ptr + offs_n[:, None] * (2 * K_HALF) + offs_b[None, :]
    lo, hi = sixteen_nibbles(w)
    tl.store(dst, lo, mask=mask)
    tl.store(dst + K_HALF, hi, mask=mask)


@triton.jit
def _w8_unpacked_gemm_kernel(
    xq_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, res_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xsm, stride_wn, stride_sg, stride_om, stride_rm,
    GROUP_SIZE: tl.constexpr,  # 0 = per output channel
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = xq_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N] view of [N, K_pad]
    acc_i = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_f = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0)
        if GROUP_SIZE == 0:
            acc_i = tl.dot(x, w, acc_i, out_dtype=tl.int32)
        else:  # the step lies in group k0 // GROUP_SIZE
            s = tl.load(ws_ptr + (k0 // GROUP_SIZE) * stride_sg + offs_n, mask=mask_n, other=0.0)
            acc_f += tl.dot(x, w, out_dtype=tl.int32).to(tl.float32) * s[None, :]
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if GROUP_SIZE == 0:
        acc_f = acc_i.to(tl.float32) * tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    acc_f *= 0.0625  # the scratch holds 16 q (sixteen_nibbles); exact, so the bits of q's sums
    out = acc_f * tl.load(xs_ptr + offs_m * stride_xsm, mask=mask_m, other=0.0)[:, None]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    res_ptrs = res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :],
             finish(out, res_ptrs, mask, out_ptr.dtype.element_ty, HAS_RESIDUAL), mask=mask)


def is_unpacked(config: dict) -> bool:
    return config.get("UNPACKED", False)


def unpacked_configs(group_size: int) -> list[dict]:
    """The unpack + int8 GEMM launch configs worth timing, best-measured first (H100, M = 1024 and
    4096: per group 128 x 64 tiles with 4 warps led on every layer, per channel the 8-warp 128/256
    tiles)."""
    # per group each step's partial is waited for and rescaled: small 4-warp tiles let 2-3 programs
    # share an SM and overlap one's rescale with another's MMA (3 stages: 72 KB of shared memory)
    tiles = [(128, 64, 128, 4, 4), (128, 128, 128, 8, 3), (256, 128, 128, 8, 3), (128, 256, 128, 8, 3),
             (128, 128, 64, 4, 4), (128, 64, 128, 4, 3), (64, 128, 128, 4, 3)]
    configs = []
    for bm, bn, bk, warps, stages in tiles:
        config = dict(UNPACKED=True, SPLIT_K=1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk if group_size == -1 else min(bk, group_size),
                      GROUP_M=8, num_warps=warps, num_stages=stages)
        if config not in configs:
            configs.append(config)
    return configs


def unpack_int4(packed_w: torch.Tensor) -> torch.Tensor:
    """Kernel-layout int4 weights int8 [N, K_pad/2] -> int8 [N, K_pad] of 16 q, in natural K order."""
    n, k_half = packed_w.shape
    out = torch.empty((n, 2 * k_half), dtype=torch.int8, device=packed_w.device)
    grid = (triton.cdiv(n, UNPACK_BLOCK_N), triton.cdiv(k_half, UNPACK_BLOCK_B))
    _unpack_int4_kernel[grid](packed_w, out, n, k_half, BLOCK_N=UNPACK_BLOCK_N, BLOCK_B=UNPACK_BLOCK_B, num_warps=4)
    return out


def launch_unpacked(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None, group_size: int, out: torch.Tensor, config: dict,
                    residual: torch.Tensor | None = None) -> None:
    """out [M, N] = the W4A8 GEMM of x_q [M, K] (unit inner stride) through an unpacked int8 scratch."""
    m, k = x_q.shape
    n = packed_w.shape[0]
    x_q = x_q if x_q.stride(1) == 1 else x_q.contiguous()
    w_scale = w_scale.contiguous()
    w8 = unpack_int4(packed_w.contiguous())
    meta = {key: value for key, value in config.items() if key not in ("UNPACKED", "SPLIT_K")}
    grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
    _w8_unpacked_gemm_kernel[grid](
        x_q, x_scale, w8, w_scale, bias if bias is not None else w_scale, residual if residual is not None else out,
        out, m, n, k, x_q.stride(0), x_scale.stride(0), w8.stride(0), w_scale.stride(0), out.stride(0),
        residual.stride(0) if residual is not None else 0,
        GROUP_SIZE=max(group_size, 0), HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, **meta)
