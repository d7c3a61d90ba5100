"""Per-token dynamic int8 activation quantization (Triton), one pass over x.

Contract: s_x = absmax(row) / 127 (fp32), x_q = round_half_even(x / s_x) as int8; an all-zero
row gives s_x = 0 and x_q = 0 (no NaN/inf). One program owns BLOCK_M whole rows held in
registers, so x is read once and x_q written once: the kernel is a pure bandwidth problem
(2 + 1 bytes per element for bf16 in, int8 out).
"""

import torch
import triton
import triton.language as tl

from .autotune import interpreting
from .pdl import pdl, pdl_enter


@triton.jit
def round_half_even(x):
    """Round to nearest, ties to even (= torch.round), for |x| < 2^23. Written with floor so
    that it runs the same compiled and under TRITON_INTERPRET (which has no libdevice.rint);
    `x - floor(x)` is exact, whereas floor(x + 0.5) rounds 0.49999997 up to 1."""
    f = tl.floor(x)
    d = x - f
    f_odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & f_odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def quantize_rows(x):
    """x fp32 [BLOCK_M, BLOCK_K] (masked entries 0) -> (int8 values, fp32 scale per row)."""
    # div_rn: IEEE division as torch does it; Triton's default `/` is approximate (div.full),
    # which flipped 2 of 2688 x_q roundings against the reference on an H100.
    scale = tl.math.div_rn(tl.max(tl.abs(x), axis=1), 127.0)  # [BLOCK_M]
    return quantize_by(x, scale[:, None]), scale


@triton.jit
def quantize_by(x, scale):
    """x fp32 -> int8 values round_half_even(x / scale), clamped; scale 0 (an all-zero row) gives 0."""
    safe = tl.where(scale > 0.0, scale, 1.0)
    q = round_half_even(tl.math.div_rn(x, safe))
    return tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8)


@triton.jit
def _per_token_quant_int8_kernel(
    # pointers
    x_ptr, xq_ptr, scale_ptr,
    # sizes
    M, K,
    # strides
    stride_xm, stride_xk, stride_qm, stride_qk,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    q, scale = quantize_rows(x.to(tl.float32))
    tl.store(xq_ptr + offs_m[:, None] * stride_qm + offs_k[None, :] * stride_qk, q, mask=mask)
    tl.store(scale_ptr + offs_m, scale, mask=offs_m < M)


def quant_launch_params(m: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) for x [m, k]: whole rows per program, several when K is small
    (~8K elements per program in registers). A decode row is one program on one SM, bound by its
    instruction latency: one warp per 256 elements (up to 32) measured fastest on an H100 (K =
    12288 SiLU-mul-quant: 18.1 us with 4 warps, 10.0 with 8, 7.6 with 32; K = 4096 RMSNorm-quant:
    4.2 us with 4, 3.4 with 16)."""
    block_k = triton.next_power_of_2(max(k, 16))
    if interpreting():  # programs run one by one in Python (~14 ms each on CI's CPU, whatever their
        # size): all rows in one program made the CPU checks of the tiny Ernie-4.5-MoE 2.3x faster
        return triton.next_power_of_2(m), block_k, 4
    # at least ~64 programs where there are rows for them: 8 expert rows of 768 in one program
    # took 4.9 us on an H200 (Qwen3-30B-A3B SiLU-mul-quant at batch 1), spread over SMs ~2 us
    block_m = max(1, min(16, 8192 // block_k, triton.next_power_of_2(triton.cdiv(m, 64))))
    return block_m, block_k, min(32, max(4, block_m * block_k // 256))


def per_token_quant_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] bf16/fp16/fp32 -> (x_q int8 [M, K], scales fp32 [M, 1])."""
    if x.dim() != 2:
        raise ValueError(f"per_token_quant_int8 takes x [M, K], got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"per_token_quant_int8 takes a float tensor, got {x.dtype}")
    m, k = x.shape
    x_q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scales = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return x_q, scales
    block_m, block_k, num_warps = quant_launch_params(m, k)
    grid = (triton.cdiv(m, block_m),)
    _per_token_quant_int8_kernel[grid](
        x, x_q, scales, m, k,
        x.stride(0), x.stride(1), x_q.stride(0), x_q.stride(1),
        BLOCK_M=block_m, BLOCK_K=block_k, num_warps=num_warps, **pdl(x.device),
    )
    return x_q, scales
