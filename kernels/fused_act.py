"""Activation kernels fused with per-token int8 quantization (Triton): one pass, one launch.

- `rmsnorm_quant(x, weight, eps)`: RMSNorm (as transformers' Qwen3/Ernie-4.5 RMSNorm computes
  it) that also returns the int8 quantization of its output for the next W4A8 GEMM; `rmsnorm`,
  the same without the quantization; `add_rmsnorm_quant`, the same on `residual + a GEMM's
  output` given as its split-K partials (the reduction and the residual add in the norm's launch);
- `silu_mul_quant(h)`: for h = [gate | up] (the fused gate/up GEMM's output), the int8
  quantization of SiLU(gate) * up, the down projection's input, which never reaches memory in
  high precision.

Rounding follows the unfused path step by step, so that the int8 values are the same: HF
rounds the normalized x to the model dtype before multiplying by the weight, and rounds SiLU's
output and the product to the model dtype; the kernels do the same in registers. Each program
holds whole rows (as `per_token_quant_int8`): the row max of the scale needs all of the row;
SiLU-mul-quant splits the few wide rows of a decode step over programs in two passes instead.
"""

import torch
import triton
import triton.language as tl

from .act_quant import quant_launch_params, quantize_by, quantize_rows
from .pdl import pdl, pdl_enter


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """fp32 x rounded to `dtype` (nearest, ties to even), returned as fp32. bf16 by bit arithmetic:
    TRITON_INTERPRET (3.6-3.9) truncates fp32 -> bf16 casts, which the CPU tests would see."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 = 0xFFFF0000 (finite x)
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def load_summed(ptr, offs, mask, stride_s, SPLITS: tl.constexpr, dtype: tl.constexpr):
    """fp32 values at ptr + offs (masked: 0) of a GEMM's output, or with SPLITS > 1 its parts
    (stride_s apart) summed in order and rounded once to `dtype`: fp32 split-K partials as
    split_k.py's reduction rounds them (no bias, no residual), or an MoE block's weighted slot
    outputs (in `dtype`) as `sum_slots` rounds them. A consumer that sums them saves that launch."""
    if SPLITS == 1:
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.zeros(offs.shape, dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        acc += tl.load(ptr + s * stride_s + offs, mask=mask, other=0.0).to(tl.float32)
    if ptr.dtype.element_ty == tl.float32:
        return acc.to(dtype).to(tl.float32)
    else:
        return round_to(acc, dtype)


@triton.jit
def _rmsnorm_quant_kernel(
    x_ptr, res_ptr, h_ptr, w_ptr, y_ptr, xq_ptr, scale_ptr,
    M, K, eps,
    stride_xs, stride_xm, stride_rm, stride_hm, stride_ym, stride_qm,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, QUANT: tl.constexpr,
    SPLITS: tl.constexpr = 1, HAS_RESIDUAL: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    dtype = y_ptr.dtype.element_ty
    x = load_summed(x_ptr, offs_m[:, None] * stride_xm + offs_k[None, :], mask, stride_xs, SPLITS, dtype)
    if HAS_RESIDUAL:  # h = residual + x, rounded as split_k.finish adds a GEMM's residual
        x = round_to(x + tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_k[None, :], mask=mask,
                                 other=0.0).to(tl.float32), dtype)
        tl.store(h_ptr + offs_m[:, None] * stride_hm + offs_k[None, :], x.to(dtype), mask=mask)
    w = tl.load(w_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=1) / K + eps)
    y = round_to(round_to(x * rstd[:, None], dtype) * w[None, :], dtype)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_k[None, :], y.to(dtype), mask=mask)
    if QUANT:
        q, scale = quantize_rows(y)
        tl.store(xq_ptr + offs_m[:, None] * stride_qm + offs_k[None, :], q, mask=mask)
        tl.store(scale_ptr + offs_m, scale, mask=offs_m < M)


@triton.jit
def silu_mul(row, mask, I):
    """SiLU(gate) * up in fp32, rounded as torch's two bf16 (or fp16) steps; `row` points at
    gate, up is I elements further."""
    gate = tl.load(row, mask=mask, other=0.0)
    return silu_mul_values(gate.to(tl.float32), tl.load(row + I, mask=mask, other=0.0).to(tl.float32), gate.dtype)


@triton.jit
def silu_mul_values(gate, up, dtype: tl.constexpr):
    """`silu_mul` of gate and up already in registers (fp32 holding `dtype` values)."""
    act = round_to(gate / (1.0 + tl.exp(-gate)), dtype)  # SiLU in fp32, rounded as torch's
    return round_to(act * up, dtype)


@triton.jit
def _silu_mul_quant_kernel(
    h_ptr, xq_ptr, scale_ptr,
    M, I,
    stride_hm, stride_qm,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < I)
    prod = silu_mul(h_ptr + offs_m[:, None] * stride_hm + offs_k[None, :], mask, I)
    q, scale = quantize_rows(prod)
    tl.store(xq_ptr + offs_m[:, None] * stride_qm + offs_k[None, :], q, mask=mask)
    tl.store(scale_ptr + offs_m, scale, mask=offs_m < M)


@triton.jit
def _silu_mul_absmax_kernel(h_ptr, partial_ptr, I, stride_hm, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
                            USE_PDL: tl.constexpr = False):
    """Split rows, pass 1: program (row, chunk) writes its chunk's absmax of SiLU(gate) * up."""
    pdl_enter(USE_PDL)
    row, chunk = tl.program_id(0), tl.program_id(1)
    offs_k = chunk * CHUNK + tl.arange(0, CHUNK)
    prod = silu_mul(h_ptr + row * stride_hm + offs_k, offs_k < I, I)
    tl.store(partial_ptr + row * BLOCK_C + chunk, tl.max(tl.abs(prod), axis=0))


@triton.jit
def _silu_mul_quant_split_kernel(
    h_ptr, partial_ptr, xq_ptr, scale_ptr, I, n_chunks, stride_hm, stride_qm,
    CHUNK: tl.constexpr, BLOCK_C: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """Split rows, pass 2: the row's absmax from pass 1's partials, then this chunk's int8
    values; SiLU(gate) * up is computed again (from L2) rather than stored between passes."""
    pdl_enter(USE_PDL)
    row, chunk = tl.program_id(0), tl.program_id(1)
    offs_c = tl.arange(0, BLOCK_C)
    partial = tl.load(partial_ptr + row * BLOCK_C + offs_c, mask=offs_c < n_chunks, other=0.0)
    scale = tl.math.div_rn(tl.max(partial, axis=0), 127.0)
    offs_k = chunk * CHUNK + tl.arange(0, CHUNK)
    prod = silu_mul(h_ptr + row * stride_hm + offs_k, offs_k < I, I)
    tl.store(xq_ptr + row * stride_qm + offs_k, quantize_by(prod, scale), mask=offs_k < I)
    if chunk == 0:
        tl.store(scale_ptr + row, scale)


def _rows(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.stride(1) != 1 or not x.dtype.is_floating_point:
        raise ValueError(f"{name} takes a float [M, K] tensor with unit inner stride, got {x.dtype} "
                         f"{tuple(x.shape)} strides {x.stride()}")


def rmsnorm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (RMSNorm(x) * weight in x.dtype, its int8 values [M, K], scales fp32 [M, 1])."""
    return _rmsnorm(x, weight, eps, quantize=True)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [M, K] -> RMSNorm(x) * weight in x.dtype: one launch where transformers' RMSNorm makes
    six or more (casts, pow, mean, rsqrt, two products); Qwen3's per-head q/k norms."""
    return _rmsnorm(x, weight, eps, quantize=False)[0]


def add_rmsnorm_quant(parts: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = residual [M, K] + a layer's output given as its parts [S, M, K], summed and rounded as
    the launch they skip would: fp32 split-K partials of `W4A8Linear(partials=True)` as the GEMM's
    reduction adds a residual (split_k.py), an MoE block's slot outputs (residual's dtype, e.g. a
    [k, T, K] view of [T * k, K]) as `sum_slots` does, or the output itself as [1, M, K] ->
    (h, RMSNorm(h) * weight, its int8 values, scales fp32 [M, 1]). A decoder layer's
    `h = x + o_proj(attn)` and the norm after it in one launch: the reduction's own launch (o_proj
    splits K 8 ways at decode on H100 and H200) is saved; likewise the MLP's, across layers."""
    if parts.dim() != 3 or parts.shape[1:] != residual.shape or parts.stride(2) != 1:
        raise ValueError(f"add_rmsnorm_quant: parts must be [S, M, K] over residual {tuple(residual.shape)} "
                         f"with unit inner stride, got {tuple(parts.shape)} strides {parts.stride()}")
    if len(parts) > 1 and parts.dtype not in (torch.float32, residual.dtype):
        raise ValueError(f"add_rmsnorm_quant: parts must be fp32 split-K partials or {residual.dtype} slot outputs, "
                         f"got {parts.dtype}")
    return _rmsnorm(parts, weight, eps, quantize=True, residual=residual)


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, quantize: bool, residual: torch.Tensor | None = None):
    """x [M, K], or with `residual` the parts [S, M, K] summed onto it (add_rmsnorm_quant)."""
    rows = residual if residual is not None else x
    _rows(rows, "rmsnorm_quant" if quantize else "rmsnorm")
    m, k = rows.shape
    if weight.shape != (k,):
        raise ValueError(f"rmsnorm: weight {tuple(weight.shape)} does not match K={k}")
    y = torch.empty_like(rows)
    h = torch.empty_like(rows) if residual is not None else y
    x_q = torch.empty((m, k) if quantize else (0,), dtype=torch.int8, device=rows.device)
    scale = torch.empty((m, 1) if quantize else (0,), dtype=torch.float32, device=rows.device)
    parts = x if x.dim() == 3 else x[None]
    if m:
        block_m, block_k, warps = quant_launch_params(m, k)
        _rmsnorm_quant_kernel[(triton.cdiv(m, block_m),)](
            parts, rows, h, weight, y, x_q, scale, m, k, eps,
            parts.stride(0), parts.stride(1), rows.stride(0), h.stride(0), y.stride(0), x_q.stride(0),
            BLOCK_M=block_m, BLOCK_K=block_k, QUANT=quantize, SPLITS=parts.shape[0],
            HAS_RESIDUAL=residual is not None, num_warps=warps, **pdl(rows.device))
    return (h, y, x_q, scale) if residual is not None else (y, x_q, scale)


# Decode rows (M <= 32) of a wide MLP are split over programs of 1024 elements in two launches
# (chunk absmax, then quantize): one program per row ran a K = 12288 row in 7.0 us and K = 25600
# in 12.1 us on one SM of an H100, 15% of a Qwen3-8B decode step.
SPLIT_MAX_ROWS = 32
SPLIT_CHUNK = 1024


def silu_mul_quant(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, 2I] = [gate | up] -> (int8 quantization of SiLU(gate) * up [M, I], scales fp32 [M, 1])."""
    _rows(h, "silu_mul_quant")
    m, two_i = h.shape
    if two_i % 2:
        raise ValueError(f"silu_mul_quant takes [gate | up] with an even width, got {tuple(h.shape)}")
    i = two_i // 2
    x_q = torch.empty((m, i), dtype=torch.int8, device=h.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=h.device)
    if m and (m > SPLIT_MAX_ROWS or i < 2 * SPLIT_CHUNK):
        block_m, block_k, warps = quant_launch_params(m, i)
        _silu_mul_quant_kernel[(triton.cdiv(m, block_m),)](
            h, x_q, scale, m, i, h.stride(0), x_q.stride(0), BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps,
            **pdl(h.device))
    elif m:
        n_chunks = triton.cdiv(i, SPLIT_CHUNK)
        block_c = triton.next_power_of_2(n_chunks)
        partial = torch.empty((m, block_c), dtype=torch.float32, device=h.device)
        _silu_mul_absmax_kernel[(m, n_chunks)](h, partial, i, h.stride(0), CHUNK=SPLIT_CHUNK, BLOCK_C=block_c,
                                                **pdl(h.device))
        _silu_mul_quant_split_kernel[(m, n_chunks)](
            h, partial, x_q, scale, i, n_chunks, h.stride(0), x_q.stride(0), CHUNK=SPLIT_CHUNK, BLOCK_C=block_c,
            **pdl(h.device))
    return x_q, scale


def rmsnorm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm (Qwen3, Ernie-4.5): normalized in fp32, rounded, then weighted."""
    xf = x.to(torch.float32)
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def add_parts_ref(parts: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + sum(parts)` as `add_rmsnorm_quant` adds them: the parts [S, M, K] summed in fp32
    in order, rounded once to residual's dtype, then added to residual ([..., K], M rows in all)
    and rounded; shaped as residual."""
    summed = parts[0].to(torch.float32, copy=True)  # fp32 parts: `.float()` would alias parts[0]
    for part in parts[1:]:
        summed += part.float()
    rows = residual.reshape(-1, residual.shape[-1])
    return (rows.float() + summed.to(rows.dtype).float()).to(rows.dtype).view(residual.shape)


def rmsnorm_quant_ref(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """The unfused computation (transformers' RMSNorm, then `per_token_quant_int8_ref`)."""
    from .reference import per_token_quant_int8_ref

    y = rmsnorm_ref(x, weight, eps)
    return (y, *per_token_quant_int8_ref(y))


def silu_mul_quant_ref(h: torch.Tensor):
    from .reference import per_token_quant_int8_ref

    gate, up = h.chunk(2, dim=-1)
    return per_token_quant_int8_ref(torch.nn.functional.silu(gate) * up)
