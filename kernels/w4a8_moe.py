"""Grouped W4A8 expert GEMM (Triton): every routed expert of a MoE layer in one launch.

Routing gives each token k experts, i.e. S = T*k (token, slot) rows. `route_by_expert` sorts the
slots by expert and pads each expert's run to a multiple of BLOCK_M, so that every BLOCK_M block
of the sorted list belongs to one expert (`block_expert`); padding entries hold the sentinel S.
The kernel runs one program per (block, N tile): it gathers its rows of x_q by slot (row =
slot // ROW_DIV: the token's hidden state for gate/up, ROW_DIV = k; the slot's own row for down,
ROW_DIV = 1), streams that expert's int4 weights through the same K loop as the dense kernel
(`w4a8_tile`: nibbles unpacked in registers, int8 tensor-core dots, per-group fp32 scaling), and
writes rows back in slot order.

Everything stays on the device, with no host sync: the grid is sized for the worst case
(S + min(S, E) * (BLOCK_M - 1) padded rows) and programs past the real padded length return at
once. That is what lets a decode step with MoE layers be captured in a CUDA graph; the loop over
experts in adapters/moe.py needs the per-expert counts on the host. At decode (T=1, k=8) it is
8 blocks of one valid row each: the cost is reading the 8 experts' weights, as for a dense GEMM.

For a few slots (decode at batch 1-2), `w4a8_moe_gemv` skips the routing: one program per (slot,
N tile) reads the slot's expert id and runs the dp4a GEMV loop (w4a8_gemv.py) on that expert's
weights. Routing is about ten torch launches per layer (scatter_add, argsort, cumsums,
searchsorted, an index write), launch latency that buys nothing when 8 slots meet 128 experts
(Qwen3-30B-A3B at batch 1: 48 layers); an expert that two slots share is read twice, from L2.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .autotune import interpreting
from .w4a8_gemm import w4a8_tile
from .w4a8_gemv import gemv_tile, word_view

GEMV_MAX_SLOTS = 16  # up to this many (token, expert) slots, `w4a8_moe_gemv` (no routing) runs instead


@dataclass
class ExpertRouting:
    """Slots sorted by expert in BLOCK_M blocks (see the module docstring); all device tensors."""

    sorted_slots: torch.Tensor  # int32 [P_max]: slot ids, sentinel n_slots for padding
    block_expert: torch.Tensor  # int32 [P_max / BLOCK_M]
    n_padded: torch.Tensor  # int32 [1]: padded rows actually used
    n_slots: int
    block_m: int


def route_by_expert(top_k_index: torch.Tensor, n_experts: int, block_m: int | None = None) -> ExpertRouting:
    """top_k_index [T, k] (expert ids) -> ExpertRouting, with torch ops only (no host sync)."""
    flat = top_k_index.reshape(-1)
    n_slots = flat.numel()
    block_m = block_m or moe_block_m(n_slots)
    dev = flat.device
    counts = torch.zeros(n_experts, dtype=torch.long, device=dev).scatter_add_(0, flat.long(), torch.ones_like(flat, dtype=torch.long))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)  # slots grouped by expert, in slot order within one
    expert_of = flat[order].long()
    rank = torch.arange(n_slots, device=dev) - (counts.cumsum(0) - counts)[expert_of]
    p_max = n_slots + min(n_slots, n_experts) * (block_m - 1)
    p_max = -(-p_max // block_m) * block_m
    sorted_slots = torch.full((p_max,), n_slots, dtype=torch.int32, device=dev)
    sorted_slots[(padded_end - padded)[expert_of] + rank] = order.to(torch.int32)
    block_start = torch.arange(0, p_max, block_m, device=dev)
    block_expert = torch.searchsorted(padded_end, block_start, right=True).clamp_(max=n_experts - 1)
    return ExpertRouting(sorted_slots, block_expert.to(torch.int32), padded_end[-1:].to(torch.int32), n_slots,
                         block_m)


def moe_block_m(n_slots: int) -> int:
    """Rows per block: 16 for decode-sized batches (each expert sees ~1 row), 64 for prefill."""
    return 16 if n_slots <= 256 else 64


@triton.jit
def _w4a8_moe_kernel(
    # pointers
    xq_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr,
    sorted_ptr, block_expert_ptr, n_padded_ptr,
    # sizes
    N, K, K_HALF, S,
    # strides
    stride_xm, stride_we, stride_wn, stride_se, stride_sg, stride_om,
    # meta-parameters
    ROW_DIV: tl.constexpr, GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    block = tl.program_id(0)
    if block * BLOCK_M >= tl.load(n_padded_ptr):
        return
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    slots = tl.load(sorted_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    mask_m = slots < S
    rows = tl.where(mask_m, slots // ROW_DIV, 0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    x_col = xq_ptr + rows[None, :] * stride_xm
    w_row = w_ptr + expert * stride_we + offs_n[:, None] * stride_wn
    ws_n = ws_ptr + expert * stride_se + offs_n
    acc = w4a8_tile(x_col, 1, mask_m, w_row, 1, ws_n, stride_sg, mask_n, K, K_HALF, 0,
                    tl.cdiv(K_HALF, BLOCK_K // 2), BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SIZE)
    x_scale = tl.load(xs_ptr + rows, mask=mask_m, other=0.0)
    out = acc * x_scale[None, :]
    out_ptrs = out_ptr + slots[None, :].to(tl.int64) * stride_om + offs_n[:, None]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


def moe_config(block_m: int, n: int, group_size: int) -> dict:
    """Launch config (fixed, not tuned: the grid depends on routing, which the autotuner cannot
    replay). BLOCK_K = 128 halves of 64 bytes fit groups >= 64; groups of 32 use BLOCK_K 64."""
    block_k = 64 if 0 < group_size < 64 else 128
    block_n = 64 if block_m <= 16 else 128
    return dict(BLOCK_M=block_m, BLOCK_N=min(block_n, triton.next_power_of_2(n)), BLOCK_K=block_k,
                num_warps=4, num_stages=3 if block_m <= 16 else 2)


def w4a8_moe_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                  routing: ExpertRouting, group_size: int, row_div: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Per-slot expert GEMM: out[s] = x[s // row_div] . W[expert(s)]^T, returns [S, N] out_dtype.

    x_q int8 [R, K] and x_scale fp32 [R, 1] (per_token_quant_int8); packed_w int8 [E, N, K_pad/2]
    and w_scale fp32 [E, G, N] (experts stacked, each in the dense kernel layout).
    """
    e, n, k_half = packed_w.shape
    k = x_q.shape[1]
    if x_q.dtype != torch.int8 or x_q.stride(1) != 1 or packed_w.stride(2) != 1 or w_scale.stride(2) != 1:
        raise ValueError("w4a8_moe_gemm takes int8 x_q [R, K] and stacked weights with unit inner strides")
    if w_scale.shape[0] != e or w_scale.shape[2] != n:
        raise ValueError(f"w_scale {tuple(w_scale.shape)} does not match packed_w {tuple(packed_w.shape)}")
    out = torch.empty((routing.n_slots, n), dtype=out_dtype, device=x_q.device)
    if routing.n_slots == 0:
        return out
    cfg = moe_config(routing.block_m, n, group_size)
    grid = (routing.sorted_slots.numel() // routing.block_m, triton.cdiv(n, cfg["BLOCK_N"]))
    _w4a8_moe_kernel[grid](
        x_q, x_scale, packed_w, w_scale, out,
        routing.sorted_slots, routing.block_expert, routing.n_padded,
        n, k, k_half, routing.n_slots,
        x_q.stride(0), packed_w.stride(0), packed_w.stride(1), w_scale.stride(0), w_scale.stride(1), out.stride(0),
        ROW_DIV=row_div, GROUP_SIZE=max(group_size, 0), **cfg,
    )
    return out



@triton.jit
def _w4a8_moe_gemv_kernel(
    # pointers (xq and w as int32 words)
    xq_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, expert_ptr,
    # sizes, in words (see _w4a8_gemv_kernel)
    N, W_HALF, X_WORDS,
    # strides (xq and w in words)
    stride_xm, stride_we, stride_wn, stride_se, stride_sg, stride_om,
    # meta-parameters
    ROW_DIV: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    ASM: tl.constexpr,
):
    slot = tl.program_id(0)
    expert = tl.load(expert_ptr + slot).to(tl.int64)
    row = slot // ROW_DIV
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = gemv_tile(xq_ptr + row * stride_xm, 0, 1, w_ptr + expert * stride_we + offs_n[:, None] * stride_wn,
                    ws_ptr + expert * stride_se + offs_n, stride_sg, mask_n, W_HALF, X_WORDS,
                    0, tl.cdiv(W_HALF, BLOCK_W), GROUP_SIZE, 1, BLOCK_N, BLOCK_W, ASM, 1)
    out = tl.sum(acc, axis=1) * (tl.load(xs_ptr + row) * 0.0625)  # one row; 16 * q nibbles
    tl.store(out_ptr + slot * stride_om + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


def w4a8_moe_gemv(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                  top_k_index: torch.Tensor, group_size: int, row_div: int, out_dtype: torch.dtype) -> torch.Tensor:
    """`w4a8_moe_gemm`'s result for few slots, without routing: out[s] = x[s // row_div] . W[e_s]^T
    with e_s = top_k_index.flatten()[s]; x_q's K a multiple of 4 (int32 words)."""
    e, n, k_half = packed_w.shape
    k = x_q.shape[1]
    experts = top_k_index.reshape(-1)
    out = torch.empty((experts.numel(), n), dtype=out_dtype, device=x_q.device)
    if experts.numel() == 0:
        return out
    xw, ww = word_view(x_q), packed_w.view(torch.int32)
    block_n, block_w = 16, min(32, k_half // 4, 32 if group_size == -1 else group_size // 4)
    _w4a8_moe_gemv_kernel[(experts.numel(), triton.cdiv(n, block_n))](
        xw, x_scale, ww, w_scale, out, experts,
        n, k_half // 4, k // 4,
        xw.stride(0), ww.stride(0), ww.stride(1), w_scale.stride(0), w_scale.stride(1), out.stride(0),
        ROW_DIV=row_div, GROUP_SIZE=max(group_size, 0), BLOCK_N=block_n, BLOCK_W=block_w,
        ASM=not interpreting(), num_warps=4,
    )
    return out
