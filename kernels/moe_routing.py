"""MoE routing in one kernel: softmax over the experts, top-k, renormalization, cast; and the
router GEMV before it, for decode batches (`route`).

transformers' routers (Qwen3-MoE's, Ernie-4.5-MoE's) spend five to seven launches per layer on
this after the router GEMV: softmax, topk (which sorts), gather, sum, divide, cast. At decode
that is launch latency, not work: the profile of Qwen3-30B-A3B at batch 1 on an H200 had 0.43 ms
of a ~4 ms step in them (48 layers, README). Here one program per token holds its E logits
(E <= 256 in every model we port) in registers and does all of it:

    p = softmax(logits in fp32)
    chosen = k x argmax(p + bias) (highest first, the lowest index among equal scores; each pick is
             masked out before the next: k <= 8 passes over E registers)
    w = p[chosen] / max(sum(p[chosen]), norm_min)   (when renormalizing)

which is Qwen3-MoE's router (no bias, renormalize = norm_topk_prob, norm_min 0) and Ernie-4.5-MoE's
(the e_score_correction_bias steers the choice only, the weights are the unbiased p,
renormalized with a floor of moe_norm_min). The order of the k outputs is topk's (descending
score), so the weighted expert outputs are summed in the order transformers sums them.
"""

import torch
import triton
import triton.language as tl

from .fused_act import round_to
from .pdl import pdl, pdl_enter

MAX_EXPERTS = 1024  # one program holds a row of logits in registers
ROUTER_MAX_TOKENS = 16  # decode batches: the router GEMV in Triton (`route`); prefill: cuBLAS
TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _router_partial_kernel(
    x_ptr, w_ptr, part_ptr,
    T, E, H, stride_xt, stride_we, stride_ps,
    ROWS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, H_SPLIT: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """Program (e block, h split): partial logits [ROWS, BLOCK_E] over H_SPLIT of the hidden size,
    fp32 products of the bf16 (or fp32) values, into part[split]."""
    pdl_enter(USE_PDL)
    offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    split = tl.program_id(1)
    mask_e = offs_e < E
    rows = tl.arange(0, ROWS)
    acc = tl.zeros((BLOCK_E, ROWS), dtype=tl.float32)
    for h in tl.static_range(0, H_SPLIT, BLOCK_H):
        offs_h = split * H_SPLIT + h + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        w = tl.load(w_ptr + offs_e[:, None] * stride_we + offs_h[None, :], mask=mask_e[:, None] & mask_h[None, :],
                    other=0.0).to(tl.float32)
        for r in tl.static_range(ROWS):
            row_ok = tl.full((BLOCK_H,), r, tl.int32) < T
            x = tl.load(x_ptr + r * stride_xt + offs_h, mask=mask_h & row_ok, other=0.0).to(tl.float32)
            acc += tl.where(rows[None, :] == r, tl.sum(w * x[None, :], axis=1)[:, None], 0.0)
    tl.store(part_ptr + split * stride_ps + rows[None, :] * E + offs_e[:, None], acc,
             mask=mask_e[:, None] & (rows[None, :] < T))


@triton.jit
def _topk_softmax_kernel(
    logits_ptr, bias_ptr, weights_ptr, ids_ptr,
    E, stride_l, stride_ps, norm_min,
    TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, RENORMALIZE: tl.constexpr, SPLITS: tl.constexpr, LOGITS_DTYPE: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    mask = offs < E
    if SPLITS == 0:  # logits [T, E] from F.linear
        logits = tl.load(logits_ptr + row * stride_l + offs, mask=mask, other=-float("inf")).to(tl.float32)
    else:  # the router GEMV's partials [SPLITS, T, E], summed in split order, rounded as F.linear's output
        logits = tl.zeros((BLOCK_E,), dtype=tl.float32)
        for s in tl.static_range(SPLITS):
            logits += tl.load(logits_ptr + s * stride_ps + row * stride_l + offs, mask=mask, other=0.0)
        logits = tl.where(mask, round_to(logits, LOGITS_DTYPE), -float("inf"))
    e = tl.exp(logits - tl.max(logits, axis=0))
    probs = e / tl.sum(e, axis=0)
    score = probs
    if HAS_BIAS:
        score += tl.load(bias_ptr + offs, mask=mask, other=0.0)
    score = tl.where(mask, score, -float("inf"))
    offs_k = tl.arange(0, BLOCK_K)
    values = tl.zeros((BLOCK_K,), dtype=tl.float32)
    ids = tl.zeros((BLOCK_K,), dtype=tl.int32)
    for i in tl.static_range(TOP_K):
        best = tl.argmax(score, axis=0, tie_break_left=True)
        values = tl.where(offs_k == i, tl.sum(tl.where(offs == best, probs, 0.0), axis=0), values)
        ids = tl.where(offs_k == i, best, ids)
        score = tl.where(offs == best, -float("inf"), score)
    if RENORMALIZE:
        values = values / tl.maximum(tl.sum(values, axis=0), norm_min)
    out = row * TOP_K + offs_k
    dtype = weights_ptr.dtype.element_ty
    tl.store(weights_ptr + out, round_to(values, dtype).to(dtype), mask=offs_k < TOP_K)
    tl.store(ids_ptr + out, ids, mask=offs_k < TOP_K)


def route(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, renormalize: bool, out_dtype: torch.dtype,
          bias: torch.Tensor | None = None, norm_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, H] and the router's weight [E, H] -> (weights [T, k] out_dtype, expert ids [T, k]
    int32): logits = x . W^T in the weight's dtype (transformers' F.linear; fp32 weights take x in
    fp32, as Ernie's router does), then `topk_softmax`.

    Decode batches (T <= ROUTER_MAX_TOKENS) run the router GEMV in Triton, split over the hidden
    size (~128 programs) with its partials summed in the top-k kernel: cuBLAS took 4.9 us for
    Qwen3-30B-A3B's [1, 2048] x [2048, 128] on an H200, a tenth of the bandwidth. Each row's sum
    is independent of T, so a token routes alike alone and in a batch."""
    if x.dim() != 2 or router_weight.dim() != 2 or x.shape[1] != router_weight.shape[1]:
        raise ValueError(f"route: x {tuple(x.shape)} does not match the router weight {tuple(router_weight.shape)}")
    n_tokens, hidden = x.shape
    if n_tokens > ROUTER_MAX_TOKENS or x.stride(1) != 1 or router_weight.stride(1) != 1:
        logits = torch.nn.functional.linear(x.to(router_weight.dtype), router_weight)
        return topk_softmax(logits, top_k, renormalize, out_dtype, bias, norm_min)
    n_experts = router_weight.shape[0]
    block_e, block_h = 16, 128
    splits = max(1, min(32, triton.cdiv(hidden, block_h), 128 // triton.cdiv(n_experts, block_e)))
    h_split = triton.cdiv(triton.cdiv(hidden, splits), block_h) * block_h
    splits = triton.cdiv(hidden, h_split)
    partial = torch.empty((splits, n_tokens, n_experts), dtype=torch.float32, device=x.device)
    if n_tokens:
        _router_partial_kernel[(triton.cdiv(n_experts, block_e), splits)](
            x, router_weight, partial, n_tokens, n_experts, hidden, x.stride(0), router_weight.stride(0),
            partial.stride(0), ROWS=triton.next_power_of_2(n_tokens), BLOCK_E=block_e, BLOCK_H=block_h,
            H_SPLIT=h_split, num_warps=4, **pdl(x.device))
    return topk_softmax(partial, top_k, renormalize, out_dtype, bias, norm_min, logits_dtype=router_weight.dtype)


def topk_softmax(logits: torch.Tensor, top_k: int, renormalize: bool, out_dtype: torch.dtype,
                 bias: torch.Tensor | None = None, norm_min: float = 0.0,
                 logits_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights [T, k] out_dtype, expert ids [T, k] int32), see the module
    docstring. Given fp32 partial sums [S, T, E] (`route`), with the dtype the logits round to."""
    splits = logits.shape[0] if logits.dim() == 3 else 0
    if logits.dim() not in (2, 3) or logits.stride(-1) != 1 or splits and logits_dtype is None:
        raise ValueError(f"topk_softmax takes logits [T, E] with unit inner stride, got {tuple(logits.shape)}")
    n_tokens, n_experts = logits.shape[-2:]
    if not 0 < top_k <= n_experts <= MAX_EXPERTS:
        raise ValueError(f"topk_softmax: top_k={top_k} of {n_experts} experts (at most {MAX_EXPERTS})")
    if bias is not None:
        bias = bias.reshape(-1).to(torch.float32).contiguous()
        if bias.numel() != n_experts:
            raise ValueError(f"topk_softmax: bias has {bias.numel()} entries for {n_experts} experts")
    weights = torch.empty((n_tokens, top_k), dtype=out_dtype, device=logits.device)
    ids = torch.empty((n_tokens, top_k), dtype=torch.int32, device=logits.device)
    if n_tokens:
        _topk_softmax_kernel[(n_tokens,)](
            logits, bias if bias is not None else logits, weights, ids,
            n_experts, logits.stride(-2), logits.stride(0) if splits else 0, norm_min,
            TOP_K=top_k, BLOCK_E=triton.next_power_of_2(n_experts), BLOCK_K=triton.next_power_of_2(top_k),
            HAS_BIAS=bias is not None, RENORMALIZE=renormalize, SPLITS=splits,
            LOGITS_DTYPE=TL_DTYPES[logits_dtype or logits.dtype], num_warps=1 if n_experts <= 128 else 4,
            **pdl(logits.device),
        )
    return weights, ids


def topk_softmax_ref(logits: torch.Tensor, top_k: int, renormalize: bool, out_dtype: torch.dtype,
                     bias: torch.Tensor | None = None, norm_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same routing in torch ops, as transformers' routers write it."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    score = probs + bias.reshape(-1).float() if bias is not None else probs
    ids = torch.topk(score, top_k, dim=-1).indices
    weights = probs.gather(-1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=norm_min)
    return weights.to(out_dtype), ids.to(torch.int32)
