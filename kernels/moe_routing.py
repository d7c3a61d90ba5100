"""MoE routing in one kernel: softmax over the experts, top-k, renormalization, cast.

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

MAX_EXPERTS = 1024  # one program holds a row of logits in registers


@triton.jit
def _topk_softmax_kernel(
    logits_ptr, bias_ptr, weights_ptr, ids_ptr,
    E, stride_l, norm_min,
    TOP_K: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, RENORMALIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    mask = offs < E
    logits = tl.load(logits_ptr + row * stride_l + offs, mask=mask, other=-float("inf")).to(tl.float32)
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


def topk_softmax(logits: torch.Tensor, top_k: int, renormalize: bool, out_dtype: torch.dtype,
                 bias: torch.Tensor | None = None, norm_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights [T, k] out_dtype, expert ids [T, k] int32), see the module docstring."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"topk_softmax takes logits [T, E] with unit inner stride, got {tuple(logits.shape)}")
    n_tokens, n_experts = logits.shape
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
            n_experts, logits.stride(0), norm_min,
            TOP_K=top_k, BLOCK_E=triton.next_power_of_2(n_experts), BLOCK_K=triton.next_power_of_2(top_k),
            HAS_BIAS=bias is not None, RENORMALIZE=renormalize, num_warps=1 if n_experts <= 128 else 4,
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
