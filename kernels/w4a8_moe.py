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

For decode batches (up to GEMV_MAX_SLOTS slots), `w4a8_moe_gemv` skips the routing: one program
per (slot, N tile) reads the slot's expert id and runs the dp4a GEMV loop (w4a8_gemv.py) on that
expert's weights. Routing is about ten torch launches per layer (scatter_add, argsort, cumsums,
searchsorted, an index write), launch latency that buys nothing when 8 slots meet 128 experts
(Qwen3-30B-A3B at batch 1: 48 layers); an expert that two slots share is read twice, from L2.

Both kernels take the router's weights (`slot_weights`) for the down projection and apply them
in the epilogue (`weigh_slot`); `sum_slots` then adds each token's k rows in one launch. From 16
decode tokens `w4a8_moe_gemv_sum` does both in one: a program per (token, N tile) runs the
token's k slots in turn and sums them in registers.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .autotune import interpreting
from .fused_act import round_to, silu_mul_values
from .pdl import pdl, pdl_enter
from .w4a8_gemm import w4a8_tile
from .w4a8_gemv import gemv_tile, word_view

# up to this many (token, expert) slots `w4a8_moe_gemv` (no routing) runs instead: Qwen3-30B-A3B at
# batch 16 (128 slots) decoded 2255 tok/s with it, 2020 with routed tiles (H200, decode_benchmark)
GEMV_MAX_SLOTS = 128
# from this many tokens the down GEMV sums the slots itself (`w4a8_moe_gemv_sum`): at batch 1, its
# programs each running 8 slots in turn, its best config took 11.6 us against 5.8 us for the GEMV
# (1024 programs) and `sum_slots`; at 16 tokens 29.3 us against 33.4 (H200, Qwen3-30B-A3B down)
GEMV_SUM_MIN_TOKENS = 16


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
    xq_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, slot_weights_ptr,
    sorted_ptr, block_expert_ptr, n_padded_ptr,
    # sizes
    N, K, K_HALF, S,
    # strides
    stride_xm, stride_we, stride_wn, stride_se, stride_sg, stride_om,
    # meta-parameters
    ROW_DIV: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
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
    out = (acc * x_scale[None, :]).to(out_ptr.dtype.element_ty)
    if HAS_WEIGHTS:
        slot_weights = tl.load(slot_weights_ptr + slots, mask=mask_m, other=0.0)
        out = weigh_slot(out, slot_weights[None, :])
    out_ptrs = out_ptr + slots[None, :].to(tl.int64) * stride_om + offs_n[:, None]
    tl.store(out_ptrs, out, mask=mask_n[:, None] & mask_m[None, :])


@triton.jit
def weigh_slot(out, weight):
    """A slot's output (out dtype) times its router weight, rounded to the out dtype: the bits of
    transformers' `expert_output * top_k_weights` in that dtype (one fp32 product, one rounding)."""
    return round_to(out.to(tl.float32) * weight.to(tl.float32), out.dtype).to(out.dtype)


def _flat_weights(slot_weights: torch.Tensor | None, n_slots: int, placeholder: torch.Tensor) -> torch.Tensor:
    if slot_weights is None:
        return placeholder
    flat = slot_weights.reshape(-1)
    if flat.numel() != n_slots:
        raise ValueError(f"slot_weights has {flat.numel()} entries for {n_slots} (token, expert) slots")
    return flat.contiguous()


def moe_config(block_m: int, n: int, group_size: int) -> dict:
    """Launch config (fixed, not tuned: the grid depends on routing, which the autotuner cannot
    replay). BLOCK_K = 128 halves of 64 bytes fit groups >= 64; groups of 32 use BLOCK_K 64."""
    block_k = 64 if 0 < group_size < 64 else 128
    block_n = 64 if block_m <= 16 else 128
    return dict(BLOCK_M=block_m, BLOCK_N=min(block_n, triton.next_power_of_2(n)), BLOCK_K=block_k,
                num_warps=4, num_stages=3 if block_m <= 16 else 2)


def w4a8_moe_gemm(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                  routing: ExpertRouting, group_size: int, row_div: int, out_dtype: torch.dtype,
                  slot_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-slot expert GEMM: out[s] = x[s // row_div] . W[expert(s)]^T, returns [S, N] out_dtype;
    with `slot_weights` ([S] or [T, k], the router's weights) each row is weighted in the epilogue
    (`weigh_slot`).

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
        x_q, x_scale, packed_w, w_scale, out, _flat_weights(slot_weights, routing.n_slots, x_scale),
        routing.sorted_slots, routing.block_expert, routing.n_padded,
        n, k, k_half, routing.n_slots,
        x_q.stride(0), packed_w.stride(0), packed_w.stride(1), w_scale.stride(0), w_scale.stride(1), out.stride(0),
        ROW_DIV=row_div, GROUP_SIZE=max(group_size, 0), HAS_WEIGHTS=slot_weights is not None, **cfg,
    )
    return out



@triton.jit
def slot_gemv(xq_ptr, xs_ptr, w_ptr, ws_ptr, expert_ptr, slot_weights_ptr, out_ptr, slot, row, offs_n, mask_n,
              W_HALF, X_WORDS, stride_xm, stride_we, stride_wn, stride_se, stride_sg,
              GROUP_SIZE: tl.constexpr, HAS_WEIGHTS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
              ASM: tl.constexpr, W_STAGES: tl.constexpr, n_absmax=0, stride_xsm=0,
              X_FLOAT: tl.constexpr = False, BLOCK_C: tl.constexpr = 1):
    """One slot's output over the tile's N: x_q's `row` times the slot's expert, in out_ptr's dtype
    (weighted by the slot's router weight with HAS_WEIGHTS). With X_FLOAT, xq_ptr holds float rows
    and xs_ptr their absmax partials ([rows, n_absmax]): the row is quantized as it loads."""
    expert = tl.load(expert_ptr + slot).to(tl.int64)
    if X_FLOAT:
        offs_c = tl.arange(0, BLOCK_C)
        absmax = tl.load(xs_ptr + row * stride_xsm + offs_c, mask=offs_c < n_absmax, other=0.0)
        x_scale = tl.math.div_rn(tl.max(absmax, axis=0), 127.0)  # quantize_rows' scale, bit for bit
    else:
        x_scale = tl.load(xs_ptr + row)
    acc = gemv_tile(xq_ptr + row * stride_xm, 0, 1, w_ptr + expert * stride_we + offs_n[:, None] * stride_wn,
                    ws_ptr + expert * stride_se + offs_n, stride_sg, mask_n, W_HALF, X_WORDS,
                    0, tl.cdiv(W_HALF, BLOCK_W), GROUP_SIZE, 1, BLOCK_N, BLOCK_W, ASM, W_STAGES, x_scale, X_FLOAT)
    out = (tl.sum(acc, axis=1) * (x_scale * 0.0625)).to(out_ptr.dtype.element_ty)  # 16 * q nibbles
    if HAS_WEIGHTS:
        out = weigh_slot(out, tl.load(slot_weights_ptr + slot))
    return out


@triton.jit
def _w4a8_moe_gemv_kernel(
    # pointers (xq and w as int32 words)
    xq_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, expert_ptr, slot_weights_ptr,
    # sizes, in words (see _w4a8_gemv_kernel); N_ABSMAX: absmax partials per row (X_FLOAT)
    N, W_HALF, X_WORDS, N_ABSMAX,
    # strides (xq and w in words; xq in elements with X_FLOAT)
    stride_xm, stride_xsm, stride_we, stride_wn, stride_se, stride_sg, stride_om,
    # meta-parameters
    ROW_DIV: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_WEIGHTS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr, W_STAGES: tl.constexpr, ASM: tl.constexpr, X_FLOAT: tl.constexpr,
    BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    slot = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    out = slot_gemv(xq_ptr, xs_ptr, w_ptr, ws_ptr, expert_ptr, slot_weights_ptr, out_ptr, slot, slot // ROW_DIV,
                    offs_n, mask_n, W_HALF, X_WORDS, stride_xm, stride_we, stride_wn, stride_se, stride_sg,
                    GROUP_SIZE, HAS_WEIGHTS, BLOCK_N, BLOCK_W, ASM, W_STAGES, N_ABSMAX, stride_xsm, X_FLOAT, BLOCK_C)
    tl.store(out_ptr + slot * stride_om + offs_n, out, mask=mask_n)


@triton.jit
def _w4a8_moe_gemv_glu_kernel(
    # pointers (xq and w as int32 words)
    xq_ptr, xs_ptr, w_ptr, ws_ptr, act_ptr, absmax_ptr, expert_ptr,
    # sizes, in words (see _w4a8_gemv_kernel); I: outputs per slot (half of the weight rows)
    I, W_HALF, X_WORDS,
    # strides (xq and w in words)
    stride_xm, stride_we, stride_wn, stride_se, stride_sg, stride_am, stride_pm,
    # meta-parameters
    ROW_DIV: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
    W_STAGES: tl.constexpr, ASM: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    slot, tile = tl.program_id(0), tl.program_id(1)
    pair = tl.arange(0, BLOCK_N)
    offs_i = tile * (BLOCK_N // 2) + pair // 2
    mask_i = offs_i < I
    # BLOCK_N weight rows: gate row i, up row I + i, gate row i + 1, ...: both halves of an output
    h = slot_gemv(xq_ptr, xs_ptr, w_ptr, ws_ptr, expert_ptr, xs_ptr, act_ptr, slot, slot // ROW_DIV,
                  offs_i + (pair % 2) * I, mask_i, W_HALF, X_WORDS, stride_xm, stride_we, stride_wn, stride_se,
                  stride_sg, GROUP_SIZE, False, BLOCK_N, BLOCK_W, ASM, W_STAGES)  # h's bf16 values
    gate, up = tl.split(tl.reshape(h.to(tl.float32), (BLOCK_N // 2, 2)))
    act = silu_mul_values(gate, up, act_ptr.dtype.element_ty)
    offs_o = tile * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    tl.store(act_ptr + slot * stride_am + offs_o, act.to(act_ptr.dtype.element_ty), mask=offs_o < I)
    tl.store(absmax_ptr + slot * stride_pm + tile, tl.max(tl.abs(act), axis=0))  # masked outputs are 0


@triton.jit
def _w4a8_moe_gemv_sum_kernel(
    # pointers (xq and w as int32 words)
    xq_ptr, xs_ptr, w_ptr, ws_ptr, res_ptr, out_ptr, expert_ptr, slot_weights_ptr,
    # sizes, in words (see _w4a8_gemv_kernel); N_ABSMAX: absmax partials per row (X_FLOAT)
    N, W_HALF, X_WORDS, N_ABSMAX,
    # strides (xq and w in words; xq in elements with X_FLOAT)
    stride_xm, stride_xsm, stride_we, stride_wn, stride_se, stride_sg, stride_rm, stride_om,
    # meta-parameters
    TOP_K: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr, W_STAGES: tl.constexpr, ASM: tl.constexpr, X_FLOAT: tl.constexpr,
    BLOCK_C: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in tl.range(0, TOP_K):  # slot order, as `sum_slots` adds them
        slot = token * TOP_K + s
        acc += slot_gemv(xq_ptr, xs_ptr, w_ptr, ws_ptr, expert_ptr, slot_weights_ptr, out_ptr, slot, slot, offs_n,
                         mask_n, W_HALF, X_WORDS, stride_xm, stride_we, stride_wn, stride_se, stride_sg,
                         GROUP_SIZE, True, BLOCK_N, BLOCK_W, ASM, W_STAGES, N_ABSMAX, stride_xsm, X_FLOAT,
                         BLOCK_C).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    y = round_to(acc, dtype)
    if HAS_RESIDUAL:
        y = round_to(y + tl.load(res_ptr + token * stride_rm + offs_n, mask=mask_n, other=0.0).to(tl.float32), dtype)
    tl.store(out_ptr + token * stride_om + offs_n, y.to(dtype), mask=mask_n)


def _block_w(config: dict, k_half: int, group_size: int) -> int:
    """BLOCK_W within the packed row's words and within one group per half (see gemv_tile)."""
    return min(config["BLOCK_W"], k_half // 4, config["BLOCK_W"] if group_size == -1 else group_size // 4)


def _gemv_input(x_q: torch.Tensor, x_scale: torch.Tensor, name: str) -> tuple[torch.Tensor, int, dict]:
    """(x as the kernel reads it, absmax partials per row, meta-parameters) for the expert GEMVs'
    two kinds of input: int8 x_q [R, K] with x_scale [R, 1] (per_token_quant_int8), read as
    words; or float rows [R, K] with x_scale their absmax partials [R, C] (`w4a8_moe_gemv_glu`),
    quantized as they load to the int8 values per_token_quant_int8 gives them."""
    if not x_q.is_floating_point():
        return word_view(x_q), 1, dict(X_FLOAT=False, BLOCK_C=1)
    if (x_q.dim() != 2 or x_q.stride(1) != 1 or x_scale.dim() != 2 or x_scale.shape[0] != x_q.shape[0]
            or x_scale.dtype != torch.float32 or x_scale.stride(1) != 1):
        raise ValueError(f"{name} takes float rows [R, K] (unit inner stride) with fp32 absmax partials [R, C], "
                         f"got {x_q.dtype} {tuple(x_q.shape)} and {x_scale.dtype} {tuple(x_scale.shape)}")
    return x_q, x_scale.shape[1], dict(X_FLOAT=True, BLOCK_C=triton.next_power_of_2(x_scale.shape[1]))


def w4a8_moe_gemv(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                  top_k_index: torch.Tensor, group_size: int, row_div: int, out_dtype: torch.dtype,
                  slot_weights: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """`w4a8_moe_gemm`'s result for few slots, without routing: out[s] = x[s // row_div] . W[e_s]^T
    with e_s = top_k_index.flatten()[s]; x_q's K a multiple of 4 (int32 words). (x_q, x_scale) may
    also be `w4a8_moe_gemv_glu`'s float rows and absmax partials (`_gemv_input`). `config`
    (BLOCK_N, BLOCK_W, W_STAGES, num_warps) defaults to `moe_gemv_config(slots)`."""
    e, n, k_half = packed_w.shape
    k = x_q.shape[1]
    experts = top_k_index.reshape(-1)
    out = torch.empty((experts.numel(), n), dtype=out_dtype, device=x_q.device)
    if experts.numel() == 0:
        return out
    (xw, n_absmax, x_meta), ww = _gemv_input(x_q, x_scale, "w4a8_moe_gemv"), packed_w.view(torch.int32)
    config = config or moe_gemv_config(experts.numel())
    _w4a8_moe_gemv_kernel[(experts.numel(), triton.cdiv(n, config["BLOCK_N"]))](
        xw, x_scale, ww, w_scale, out, experts, _flat_weights(slot_weights, experts.numel(), x_scale),
        n, k_half // 4, k // 4, n_absmax,
        xw.stride(0), x_scale.stride(0), ww.stride(0), ww.stride(1), w_scale.stride(0), w_scale.stride(1),
        out.stride(0), ROW_DIV=row_div, GROUP_SIZE=max(group_size, 0), HAS_WEIGHTS=slot_weights is not None,
        BLOCK_N=config["BLOCK_N"], BLOCK_W=_block_w(config, k_half, group_size), W_STAGES=config["W_STAGES"],
        ASM=not interpreting(), num_warps=config["num_warps"], **x_meta, **pdl(x_q.device),
    )
    return out


def w4a8_moe_gemv_glu(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                      top_k_index: torch.Tensor, group_size: int, row_div: int, out_dtype: torch.dtype,
                      config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate/up GEMV at decode with SiLU(gate) * up in its epilogue: packed_w's 2I rows per
    expert are [gate | up]; each program takes BLOCK_N / 2 outputs' gate and up rows. Returns
    (act [S, I] out_dtype, absmax [S, C] fp32: each program's max |act|), which the down GEMVs
    (`w4a8_moe_gemv`, `w4a8_moe_gemv_sum`) quantize as they load: bit for bit
    `silu_mul_quant(w4a8_moe_gemv(...))`'s int8 values, without its launch."""
    e, two_i, k_half = packed_w.shape
    k = x_q.shape[1]
    if two_i % 2:
        raise ValueError(f"w4a8_moe_gemv_glu takes [gate | up] weight rows, got an odd {two_i}")
    experts = top_k_index.reshape(-1)
    config = config or moe_gemv_config(experts.numel())
    inter, half = two_i // 2, config["BLOCK_N"] // 2
    act = torch.empty((experts.numel(), inter), dtype=out_dtype, device=x_q.device)
    absmax = torch.empty((experts.numel(), triton.cdiv(inter, half)), dtype=torch.float32, device=x_q.device)
    if experts.numel() == 0:
        return act, absmax
    xw, ww = word_view(x_q), packed_w.view(torch.int32)
    _w4a8_moe_gemv_glu_kernel[absmax.shape](
        xw, x_scale, ww, w_scale, act, absmax, experts,
        inter, k_half // 4, k // 4,
        xw.stride(0), ww.stride(0), ww.stride(1), w_scale.stride(0), w_scale.stride(1), act.stride(0),
        absmax.stride(0), ROW_DIV=row_div, GROUP_SIZE=max(group_size, 0), BLOCK_N=config["BLOCK_N"],
        BLOCK_W=_block_w(config, k_half, group_size), W_STAGES=config["W_STAGES"], ASM=not interpreting(),
        num_warps=config["num_warps"], **pdl(x_q.device),
    )
    return act, absmax


def w4a8_moe_gemv_sum(x_q: torch.Tensor, x_scale: torch.Tensor, packed_w: torch.Tensor, w_scale: torch.Tensor,
                      top_k_index: torch.Tensor, group_size: int, slot_weights: torch.Tensor, out_dtype: torch.dtype,
                      residual: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """`sum_slots(w4a8_moe_gemv(..., row_div=1, slot_weights), k, residual)` in one launch, bit for
    bit: one program per (token, N tile) runs its k slots' GEMVs in slot order and sums them in
    registers, so the [T * k, N] slot outputs never reach memory (the down projection at decode).
    x_q int8 [T * k, K] (one row per slot); returns [T, N]."""
    e, n, k_half = packed_w.shape
    n_tokens, top_k = top_k_index.shape
    k = x_q.shape[1]
    if x_q.shape[0] != n_tokens * top_k:
        raise ValueError(f"w4a8_moe_gemv_sum takes one x_q row per slot ({n_tokens * top_k}), got {x_q.shape[0]}")
    if residual is not None and (residual.shape != (n_tokens, n) or residual.dtype != out_dtype
                                 or residual.stride(1) != 1):
        raise ValueError(f"w4a8_moe_gemv_sum: residual must be {out_dtype} [{n_tokens}, {n}] with unit inner "
                         f"stride, got {residual.dtype} {tuple(residual.shape)}")
    out = torch.empty((n_tokens, n), dtype=out_dtype, device=x_q.device)
    if n_tokens == 0:
        return out
    (xw, n_absmax, x_meta), ww = _gemv_input(x_q, x_scale, "w4a8_moe_gemv_sum"), packed_w.view(torch.int32)
    config = config or moe_gemv_sum_config(n_tokens)
    res = residual if residual is not None else out
    _w4a8_moe_gemv_sum_kernel[(n_tokens, triton.cdiv(n, config["BLOCK_N"]))](
        xw, x_scale, ww, w_scale, res, out, top_k_index.reshape(-1), _flat_weights(slot_weights, x_q.shape[0], x_scale),
        n, k_half // 4, k // 4, n_absmax,
        xw.stride(0), x_scale.stride(0), ww.stride(0), ww.stride(1), w_scale.stride(0), w_scale.stride(1),
        res.stride(0), out.stride(0), TOP_K=top_k, GROUP_SIZE=max(group_size, 0), HAS_RESIDUAL=residual is not None,
        BLOCK_N=config["BLOCK_N"], BLOCK_W=_block_w(config, k_half, group_size), W_STAGES=config["W_STAGES"],
        ASM=not interpreting(), num_warps=config["num_warps"], **x_meta, **pdl(x_q.device),
    )
    return out


def moe_gemv_sum_config(n_tokens: int) -> dict:
    """`w4a8_moe_gemv_sum`'s launch config (`python -m kernels.config_sweep moe-sum`, H200,
    Qwen3-30B-A3B's down projection): at 16 tokens one warp a program over 8 outputs, loads not
    pipelined, took 29.3 us against 33.4 us for the GEMV and `sum_slots`; two stages, two warps or
    16-32 outputs a program were 23-34% slower."""
    return dict(BLOCK_N=8, BLOCK_W=32, W_STAGES=1, num_warps=1)


def moe_gemv_sum_candidates(n_tokens: int) -> list[dict]:
    """Configs the `moe` sweep times for `w4a8_moe_gemv_sum`, `moe_gemv_sum_config(n_tokens)` first."""
    tiles = [(4, 32, 1), (8, 32, 1), (8, 32, 2), (16, 32, 2), (16, 32, 4), (8, 16, 1), (32, 32, 4)]
    default = moe_gemv_sum_config(n_tokens)
    return [default] + [config for stages in (1, 2, 3, 4) for bn, bw, warps in tiles
                        if (config := dict(BLOCK_N=bn, BLOCK_W=bw, W_STAGES=stages, num_warps=warps)) != default]


def moe_gemv_config(n_slots: int) -> dict:
    """The expert GEMV's launch config (fixed; `python -m kernels.config_sweep moe` on an H200,
    Qwen3-30B-A3B experts): at 8 slots (batch 1) the 768-1024 programs hold too few bytes in
    flight; pipelining the loads 2 steps ahead (W_STAGES 3) took gate_up from 9.4 to 7.7 us and
    down from 5.7 to 5.3, and two warps a program instead of four (each thread two loads a step,
    more programs resident) from 7.1 to 6.9 us and 4.9 to 4.5 (at 16 slots gate_up 14.2 to 9.9).
    At 128 slots (batch 16) there are programs enough and W_STAGES 1 is the fastest (gate_up
    51.0 us, 3.9 TB/s of slot weights, 2% off the best tile)."""
    if n_slots <= 16:
        return dict(BLOCK_N=16, BLOCK_W=32, W_STAGES=3, num_warps=2)
    return dict(BLOCK_N=16, BLOCK_W=32, W_STAGES=1, num_warps=4)


def moe_gemv_candidates(n_slots: int) -> list[dict]:
    """Configs the `moe` sweep times, `moe_gemv_config(n_slots)` first."""
    tiles = [(16, 32, 2), (16, 32, 4), (32, 32, 4), (8, 32, 2), (16, 16, 2), (64, 32, 8), (32, 16, 4)]
    default = moe_gemv_config(n_slots)
    return [default] + [config for stages in (1, 2, 3, 4) for bn, bw, warps in tiles
                        if (config := dict(BLOCK_N=bn, BLOCK_W=bw, W_STAGES=stages, num_warps=warps)) != default]


@triton.jit
def _sum_slots_kernel(y_ptr, res_ptr, out_ptr, N, stride_ym, stride_rm, stride_om,
                      TOP_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr,
                      USE_PDL: tl.constexpr = False):
    pdl_enter(USE_PDL)
    token = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in tl.static_range(TOP_K):  # slot order, as torch sums them
        acc += tl.load(y_ptr + (token * TOP_K + s) * stride_ym + offs_n, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    y = round_to(acc, dtype)
    if HAS_RESIDUAL:  # `residual + y` of two dtype tensors
        y = round_to(y + tl.load(res_ptr + token * stride_rm + offs_n, mask=mask, other=0.0).to(tl.float32), dtype)
    tl.store(out_ptr + token * stride_om + offs_n, y.to(dtype), mask=mask)


def sum_slots(y: torch.Tensor, top_k: int, residual: torch.Tensor | None = None) -> torch.Tensor:
    """[T * k, N] weighted expert outputs in (token, slot) order -> [T, N]: each token's k rows
    summed in fp32 in slot order, rounded once (torch's `y.reshape(T, k, N).sum(1)`, in one launch
    where torch's reduction took 3.5 us at decode on an H200); plus `residual` [T, N] if given,
    as torch adds it after (the decoder layer's residual add, 1.9 us as a launch of its own)."""
    if y.dim() != 2 or y.stride(1) != 1 or y.shape[0] % top_k:
        raise ValueError(f"sum_slots takes [T * {top_k}, N] rows with unit inner stride, got {tuple(y.shape)}")
    n_tokens, n = y.shape[0] // top_k, y.shape[1]
    if residual is not None and (residual.shape != (n_tokens, n) or residual.dtype != y.dtype
                                 or residual.stride(1) != 1):
        raise ValueError(f"sum_slots: residual must be {y.dtype} [{n_tokens}, {n}] with unit inner stride, "
                         f"got {residual.dtype} {tuple(residual.shape)}")
    out = torch.empty((n_tokens, n), dtype=y.dtype, device=y.device)
    if n_tokens:
        block_n = min(1024, triton.next_power_of_2(n))
        res = residual if residual is not None else y
        _sum_slots_kernel[(n_tokens, triton.cdiv(n, block_n))](
            y, res, out, n, y.stride(0), res.stride(0), out.stride(0),
            TOP_K=top_k, HAS_RESIDUAL=residual is not None, BLOCK_N=block_n, num_warps=4,
            **pdl(y.device))
    return out
