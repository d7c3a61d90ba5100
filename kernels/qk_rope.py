"""Qwen3's attention inputs for one decode token in one launch (Triton): the per-head q/k
RMSNorm, rotary embedding (rotate-half form) and the K/V cache write.

transformers runs this as ~20 kernels per layer (two norms, then q * cos, rotate_half's slices,
negation and cat, * sin and the sum for q and for k, then one index_copy each for K and V):
1.0 ms of a 4.6 ms Qwen3-8B W4A8 decode step on an H100, almost all of it launch latency.
Here one program per (row, head) reads its head of the fused qkv output and writes the query,
or the key and the value into the cache slot. Rounding follows transformers' bf16 steps (norm
as `fused_act.rmsnorm`; then q * cos, rotate_half(q) * sin and their sum each rounded to the
model dtype), so values match the unfused path up to the norm's fp32 summation order.
"""

import torch
import triton
import triton.language as tl

from .fused_act import load_summed, round_to
from .pdl import pdl, pdl_enter


@triton.jit
def _qk_norm_rope_kernel(
    # pointers
    qkv_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, q_ptr, kc_ptr, vc_ptr, slot_ptr,
    # scalars
    eps,
    # strides (stride_xs: between split-K partials)
    stride_xs, stride_xb, stride_cb, stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
    # meta-parameters
    HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)  # query heads [0, HQ), then key heads
    offs = tl.arange(0, D)
    rot = (offs + D // 2) % D  # rotate_half(x)[i] = -x[i + D/2] (first half), x[i - D/2] (second)
    head = qkv_ptr + b * stride_xb + h * D
    dtype = q_ptr.dtype.element_ty
    whole = offs < D
    x = load_summed(head, offs, whole, stride_xs, SPLITS, dtype)
    x_rot = load_summed(head, rot, whole, stride_xs, SPLITS, dtype)
    is_q = h < HQ
    w = tl.where(is_q, tl.load(qw_ptr + offs), tl.load(kw_ptr + offs)).to(tl.float32)
    w_rot = tl.where(is_q, tl.load(qw_ptr + rot), tl.load(kw_ptr + rot)).to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    y = round_to(round_to(x * rstd, dtype) * w, dtype)
    y_rot = round_to(round_to(x_rot * rstd, dtype) * w_rot, dtype)
    cos = tl.load(cos_ptr + b * stride_cb + offs).to(tl.float32)
    sin = tl.load(sin_ptr + b * stride_cb + offs).to(tl.float32)
    sign = tl.where(offs < D // 2, -1.0, 1.0)
    out = round_to(round_to(y * cos, dtype) + sign * round_to(y_rot * sin, dtype), dtype).to(dtype)
    if is_q:
        tl.store(q_ptr + b * stride_qb + h * stride_qh + offs, out)
    else:
        hk = h - HQ
        slot = tl.load(slot_ptr)
        tl.store(kc_ptr + b * stride_kb + hk * stride_kh + slot * stride_kl + offs, out)
        v = load_summed(head + HKV * D, offs, whole, stride_xs, SPLITS, dtype)  # v heads follow the k heads
        tl.store(vc_ptr + b * stride_vb + hk * stride_vh + slot * stride_vl + offs, v.to(dtype))


def qk_norm_rope_store(qkv: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                       cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """One decode token per row: qkv [B, (Hq + 2 Hkv) * D] (q heads, k heads, v heads), or
    [S, B, (Hq + 2 Hkv) * D] as `W4A8Linear(partials=True)` gives it (S > 1: fp32 split-K
    partials, summed here);
    norm weights [D], cos/sin [B, D] (the model's rotary embedding at each row's position), caches
    [B, Hkv, L, D] (last dim contiguous), slot a device int64 scalar. Writes the normalized,
    rotated key and the value at `slot`; returns the query [B, Hq, 1, D] in the cache's dtype."""
    parts = qkv if qkv.dim() == 3 else qkv[None]
    if len(parts) > 1 and (qkv.dtype != torch.float32 or qkv.stride(0) != qkv.shape[1] * qkv.stride(1)):
        raise ValueError(f"qkv split-K partials must be fp32 [S, B, W] with contiguous partials, got {qkv.dtype} "
                         f"{tuple(qkv.shape)} strides {qkv.stride()}")
    qkv = parts[0]
    b, width = qkv.shape
    d = k_cache.shape[-1]
    if width != (heads + 2 * kv_heads) * d or qkv.stride(1) != 1:
        raise ValueError(f"qkv must be [B, (heads + 2 kv_heads) * head_dim] = [B, {(heads + 2 * kv_heads) * d}] "
                         f"with unit inner stride, got {tuple(qkv.shape)} strides {qkv.stride()}")
    if d & (d - 1) or d % 2 or tuple(cos.shape) != (b, d) or cos.stride() != sin.stride() or cos.stride(1) != 1:
        raise ValueError(f"cos/sin must be [B, head_dim] = [{b}, {d}] (head_dim a power of two), "
                         f"got {tuple(cos.shape)}, {tuple(sin.shape)}")
    q = torch.empty((b, heads, 1, d), dtype=k_cache.dtype, device=qkv.device)
    _qk_norm_rope_kernel[(b, heads + kv_heads)](
        qkv, q_weight, k_weight, cos, sin, q, k_cache, v_cache, slot, eps,
        parts.stride(0), qkv.stride(0), cos.stride(0), q.stride(0), q.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        HQ=heads, HKV=kv_heads, D=d, SPLITS=parts.shape[0], **pdl(qkv.device),
    )
    return q


def qk_norm_rope_ref(qkv, q_weight, k_weight, eps, cos, sin, heads, kv_heads):
    """transformers' steps (Qwen3Attention): (q [B, Hq, 1, D], k [B, Hkv, 1, D], v [B, Hkv, 1, D])."""
    from .fused_act import rmsnorm_ref

    b = qkv.shape[0]
    d = q_weight.shape[0]
    q, k, v = qkv.view(b, 1, -1, d).split([heads, kv_heads, kv_heads], dim=2)
    q, k = rmsnorm_ref(q, q_weight, eps).transpose(1, 2), rmsnorm_ref(k, k_weight, eps).transpose(1, 2)
    cos, sin = cos[:, None, None], sin[:, None, None]

    def rotate_half(x):
        return torch.cat((-x[..., d // 2:], x[..., :d // 2]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v.transpose(1, 2)
