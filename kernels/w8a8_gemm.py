"""W8A8 GEMM (Triton): int8 x [M, K] times int8 w [N, K] -> int32 `tl.dot`, scales in the epilogue.

y[m, n] = (sum_k x_q[m, k] * w_q[n, k]) * s_x[m] * s_w[n] + bias[n], output bf16/fp16/fp32.
The weight keeps the `nn.Linear` orientation [N, K]; the kernel reads it as a [BLOCK_K,
BLOCK_N] tile through strides. Used by the adapters for 8-bit-weight checkpoints
(SmoothQuant-style W8A8) and as the int8 building block of the W4A8 kernel.
"""

import torch
import triton
import triton.language as tl

from .autotune import m_bucket, pick_config


@triton.jit
def grouped_tile(pid, num_a, num_b, GROUP: tl.constexpr):
    """Program id -> (tile index along a, along b), walking GROUP a-tiles per b-tile so that
    programs running together share their b-operand tiles in L2 (Triton tutorial 03 order)."""
    num_in_group = GROUP * num_b
    first_a = (pid // num_in_group) * GROUP
    group_len = tl.minimum(num_a - first_a, GROUP)
    return first_a + (pid % num_in_group) % group_len, (pid % num_in_group) // group_len


@triton.jit
def _w8a8_gemm_kernel(
    # pointers
    xq_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr,
    # sizes
    M, N, K,
    # strides
    stride_xm, stride_xk, stride_xsm, stride_wn, stride_wk, stride_om, stride_on,
    # quant params
    HAS_BIAS: tl.constexpr,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = xq_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0)
        acc = tl.dot(x, w, acc, out_dtype=tl.int32)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    x_scale = tl.load(xs_ptr + offs_m * stride_xsm, mask=mask_m, other=0.0)
    w_scale = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def candidate_configs(m: int) -> list[dict]:
    tiles = [(128, 128, 128, 8, 3), (64, 128, 128, 4, 4), (128, 256, 128, 8, 3), (32, 128, 128, 4, 4),
             (16, 128, 256, 4, 4), (16, 64, 256, 4, 4), (256, 128, 128, 8, 3)]
    if m <= 64:
        tiles.sort(key=lambda t: t[0])
    return [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in tiles]


def w8a8_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
              config: dict | None = None) -> torch.Tensor:
    """x_q int8 [M, K], x_scale fp32 [M, 1], w_q int8 [N, K], w_scale fp32 [N] or [N, 1] -> [M, N]."""
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8 or x_q.dim() != 2 or w_q.dim() != 2:
        raise ValueError(f"w8a8_gemm takes int8 x_q [M, K] and w_q [N, K], got {x_q.dtype} "
                         f"{tuple(x_q.shape)} and {w_q.dtype} {tuple(w_q.shape)}")
    m, k = x_q.shape
    n = w_q.shape[0]
    if w_q.shape[1] != k:
        raise ValueError(f"K mismatch: x_q has K={k}, w_q has K={w_q.shape[1]}")
    if tuple(x_scale.shape) != (m, 1):
        raise ValueError(f"x_scale must be [{m}, 1], got {tuple(x_scale.shape)}")
    w_scale = w_scale.reshape(-1).to(torch.float32).contiguous()
    if w_scale.numel() != n:
        raise ValueError(f"w_scale must have {n} entries (one per output channel), got {w_scale.numel()}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    if m == 0:
        return out

    def launch(cfg: dict) -> torch.Tensor:
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
        _w8a8_gemm_kernel[grid](
            x_q, x_scale, w_q, w_scale, bias if bias is not None else w_scale, out,
            m, n, k,
            x_q.stride(0), x_q.stride(1), x_scale.stride(0), w_q.stride(0), w_q.stride(1),
            out.stride(0), out.stride(1),
            HAS_BIAS=bias is not None, **cfg,
        )
        return out

    if config is None:
        key = f"w8a8|N{n}|K{k}|M{m_bucket(m)}|{out_dtype}"
        config = pick_config(key, candidate_configs(m), launch, x_q.device)
    return launch(config)
