"""Split-K for the decode GEMM and GEMV (Triton): each program's output store, and the
deterministic reduction of the fp32 partials.

With SPLIT_K > 1 the programs of one output tile each write an fp32 partial [SPLIT_K, M, N] and
a second launch sums them in a fixed order, so identical requests give identical bits (atomic
adds would sum in arrival order, which flips greedy ties between them).

A residual [M, N] may be added where the result is stored (HAS_RESIDUAL): `residual + y` as torch
computes it after the GEMM, y rounded to the output dtype first and the sum rounded again, so a
decoder layer's residual add costs no launch of its own (1.9 us each at decode on an H200).
"""

import triton
import triton.language as tl

from .fused_act import round_to
from .pdl import pdl, pdl_enter


@triton.jit
def split_range(n_iters, SPLIT_K: tl.constexpr):
    """This program's K steps [start, end) of n_iters, split SPLIT_K ways over program axis 1."""
    per_split = tl.cdiv(n_iters, SPLIT_K)
    start = tl.program_id(1) * per_split
    return start, tl.minimum(start + per_split, n_iters)


@triton.jit
def store_tile(out, out_ptr, out_ptrs, mask, bias_ptr, offs_n, mask_n, res_ptrs,
               HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SPLIT_K: tl.constexpr):
    """out fp32 [BLOCK_N, BLOCK_M] (activation and weight scales applied) at `out_ptrs`: the result
    (bias and residual added, out_ptr's dtype) or, split over K, this program's fp32 partial."""
    if SPLIT_K == 1:
        if HAS_BIAS:
            out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptrs, finish(out, res_ptrs, mask, out_ptr.dtype.element_ty, HAS_RESIDUAL), mask=mask)
    else:
        tl.store(out_ptrs, out, mask=mask)  # summed by _split_k_reduce_kernel


@triton.jit
def finish(y, res_ptrs, mask, dtype: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """fp32 y -> `dtype`, plus the residual at `res_ptrs` (as torch adds two `dtype` tensors)."""
    y = y.to(dtype)
    if HAS_RESIDUAL:
        y = round_to(y.to(tl.float32) + tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32), dtype).to(dtype)
    return y


@triton.jit
def _split_k_reduce_kernel(
    # pointers
    part_ptr, bias_ptr, res_ptr, out_ptr,
    # sizes
    M, N,
    # strides
    stride_ps, stride_pm, stride_rm, stride_om, stride_on,
    # meta-parameters
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    m = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):  # fixed order: the same bits on every call
        acc += tl.load(part_ptr + s * stride_ps + m * stride_pm + offs_n, mask=mask_n, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    y = finish(acc, res_ptr + m * stride_rm + offs_n, mask_n, out_ptr.dtype.element_ty, HAS_RESIDUAL)
    tl.store(out_ptr + m * stride_om + offs_n * stride_on, y, mask=mask_n)


def reduce_split_k(part, bias, out, residual=None, block_n: int = 256) -> None:
    """out [M, N] = sum of part [SPLIT_K, M, N] (fp32, fixed order) + bias, + residual [M, N]."""
    split, m, n = part.shape
    _split_k_reduce_kernel[(m, triton.cdiv(n, block_n), 1)](
        part, bias if bias is not None else part, residual if residual is not None else part, out, m, n,
        part.stride(0), part.stride(1), residual.stride(0) if residual is not None else 0, out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, SPLIT_K=split, BLOCK_N=block_n,
        **pdl(out.device),
    )
