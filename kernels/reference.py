"""Torch references for the W4A8 numerics contract (../shared/ARCHITECTURE.md).

These define the numbers every kernel, adapter and agent port is checked against:
- weights: int4 symmetric, per output channel (group_size -1) or per group of K;
  s = absmax / 7, q = clamp(round(W / s), -8, 7), no zero point;
- activations: per-token symmetric int8, s_x = absmax(row) / 127, x_q = round(x / s_x);
- GEMM: int products summed exactly, times s_x[m] * s_w[n] (per group: each group's partial
  sum dequantized before accumulation), bias added last.
`round` is round-half-to-even everywhere (torch.round), and the Triton kernels match it.
Also a W4A4 reference (per-token int4 activations) to measure what 4-bit activations cost.
"""

import torch

GROUP_SIZES = (-1, 32, 64, 128)


def check_group_size(k: int, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")
    if group_size > 0 and k % group_size:
        raise ValueError(f"in_features K={k} is not a multiple of group_size={group_size}")


def quantize_weight(w: torch.Tensor, group_size: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q int8 [N, K] in [-8, 7], scales fp32 [N, G]); G = 1 per channel."""
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    check_group_size(k, group_size)
    gs = k if group_size == -1 else group_size
    wg = w.detach().to(torch.float32).reshape(n, k // gs, gs)
    scales = wg.abs().amax(dim=-1) / 7.0  # [N, G]
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero group -> q = 0
    q = torch.clamp(torch.round(wg / safe[..., None]), -8, 7).to(torch.int8)
    return q.reshape(n, k), scales


def dequantize_weight(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """q [N, K] int, scales [N, G] -> fp32 [N, K]."""
    n, k = q.shape
    g = scales.shape[-1]
    return (q.to(torch.float32).reshape(n, g, k // g) * scales.to(torch.float32)[..., None]).reshape(n, k)


def _per_token_quant(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.to(torch.float32)
    amax = xf.abs().amax(dim=-1, keepdim=True)  # [M, 1]
    # Divide by a tensor, not the Python number: CUDA torch turns `t / 127` into t * (1/127),
    # one ulp off IEEE division (seen on an H100), and the contract must not depend on the device.
    scale = amax / torch.full_like(amax, qmax)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # zero row -> x_q = 0, s = 0
    q = torch.clamp(torch.round(xf / safe), -qmax - 1, qmax).to(torch.int8)
    return q, scale


def per_token_quant_int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x_q int8 [M, K], scales fp32 [M, 1]); a zero row gives x_q = 0, s = 0."""
    return _per_token_quant(x, 127)


def per_token_quant_int4_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x_q int8 [M, K] in [-8, 7], scales fp32 [M, 1]); s = absmax / 7."""
    return _per_token_quant(x, 7)


def _int_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Integer GEMM with per-token and per-channel/per-group scales, accumulated in fp64.

    fp64 holds every int32 partial sum exactly, so this is the exact contract value up to
    the final rounding to `out_dtype`.
    """
    m, k = x_q.shape
    n, g = w_scale.shape
    xg = x_q.to(torch.float64).reshape(m, g, k // g)
    qg = q.to(torch.float64).reshape(n, g, k // g)
    partial = torch.einsum("mgk,ngk->mgn", xg, qg)  # exact int partial sums per group
    y = (partial * w_scale.to(torch.float64).t()[None]).sum(dim=1) * x_scale.to(torch.float64)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype)


def w4a8_linear_ref(x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """The contract W4A8 linear: x [M, K] float, q [N, K] int4, w_scale [N, G] -> [M, N] x.dtype."""
    x_q, x_scale = per_token_quant_int8_ref(x)
    return _int_gemm(x_q, x_scale, q, w_scale, bias, x.dtype)


def w8a8_gemm_ref(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """int8 x [M, K] times int8 w [N, K], scales x [M, 1] and w [N] or [N, 1] -> [M, N]."""
    return _int_gemm(x_q, x_scale, w_q, w_scale.reshape(-1, 1), bias, out_dtype)


def w4a4_linear_ref(x: torch.Tensor, q: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """W4A4: int4 weights, per-token symmetric int4 activations. No Triton kernel: Hopper has
    no int4 tensor cores, so this exists to measure the accuracy cost against W4A8."""
    x_q, x_scale = per_token_quant_int4_ref(x)
    return _int_gemm(x_q, x_scale, q, w_scale, bias, x.dtype)
