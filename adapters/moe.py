"""W4A8 routed experts: a drop-in for transformers 5.x fused expert modules.

transformers 5.x holds experts fused in memory (`experts.gate_up_proj [E, 2I, H]`,
`experts.down_proj [E, H, I]`) but checkpoints name them per expert
(`mlp.experts.<e>.gate_proj.weight`). `W4A8Experts` is an `nn.ModuleList` of per-expert
W4A8 MLPs, so its state dict keys are the checkpoint's, and its forward has the HF experts
signature `(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]`; the
router (kept exact, in HF's module) has already chosen the experts.

Two ways to run them, the same values:
- grouped (after `stack()`, which fusion.py calls for W4A8 experts on the Triton path): the
  experts' buffers become views of stacked [E, ...] tensors and all experts run in two launches
  of `kernels.w4a8_moe` (gate/up, down; routed tiles with `silu_mul_quant` between, or for a few
  slots the dp4a GEMVs, under GEMV_SUM_MIN_TOKENS tokens with SiLU-mul in the gate/up epilogue),
  no host sync (so a decode step can be captured in a CUDA graph);
- loop: tokens sorted by expert and each expert run once on all of its tokens (at most E
  launches, not one per token); needs the per-expert counts on the host.
The k expert outputs of a token are summed in a fixed order, so repeated identical requests
give identical bits (`index_add_` on CUDA uses atomics, whose order varies).
"""

from typing import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN

from kernels.autotune import triton_runs_on
from kernels.act_quant import per_token_quant_int8
from kernels.fused_act import silu_mul_quant
from kernels.linear import W4A8Linear, attached_int8
from kernels.moe_routing import route
from kernels.w4a8_moe import (GEMV_MAX_SLOTS, GEMV_SUM_MIN_TOKENS, route_by_expert, sum_slots, w4a8_moe_gemm,
                              w4a8_moe_gemv, w4a8_moe_gemv_glu, w4a8_moe_gemv_sum)


class ExpertMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, make_linear: Callable[[int, int], nn.Module]):
        super().__init__()
        self.gate_proj = make_linear(hidden, intermediate)
        self.up_proj = make_linear(hidden, intermediate)
        self.down_proj = make_linear(intermediate, hidden)


class W4A8Experts(nn.ModuleList):
    """Experts whose projections come from `make_linear(in_features, out_features)` (W4A8Linear,
    or W8A8Linear for 8-bit checkpoints)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, hidden_act: str,
                 make_linear: Callable[[int, int], nn.Module]):
        super().__init__(ExpertMLP(hidden, intermediate, make_linear) for _ in range(num_experts))
        # a plain attribute, not a submodule: the list's items are the experts alone
        object.__setattr__(self, "act_fn", ACT2FN[hidden_act])
        self.hidden_act = hidden_act
        self.stacked: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def stack(self) -> bool:
        """Move every expert's W4A8 buffers into stacked tensors (the per-expert buffers become
        views of them: same memory, same state dict) and run grouped from now on. Returns False,
        changing nothing, when the experts are not W4A8 on the Triton path without zero points."""
        layers = [m for e in self for m in (e.gate_proj, e.up_proj, e.down_proj)]
        if not all(isinstance(m, W4A8Linear) and m.use_triton and m.zeros is None and m.bias is None
                   for m in layers) or self.hidden_act != "silu":
            return False
        if self.stacked is None:
            inter = self[0].gate_proj.out_features
            w13 = torch.stack([torch.cat([e.gate_proj.qweight, e.up_proj.qweight]) for e in self])
            s13 = torch.stack([torch.cat([e.gate_proj.scales, e.up_proj.scales], dim=1) for e in self])
            w2 = torch.stack([e.down_proj.qweight for e in self])
            s2 = torch.stack([e.down_proj.scales for e in self])
            for i, e in enumerate(self):
                e.gate_proj.qweight, e.up_proj.qweight = w13[i, :inter], w13[i, inter:]
                e.gate_proj.scales, e.up_proj.scales = s13[i, :, :inter], s13[i, :, inter:]
                e.down_proj.qweight, e.down_proj.scales = w2[i], s2[i]
            self.stacked = {"w13": w13, "s13": s13, "w2": w2, "s2": s2}
        return True

    def routed(self, x_q: torch.Tensor, x_scale: torch.Tensor, top_k_index: torch.Tensor,
               top_k_weights: torch.Tensor, dtype: torch.dtype, residual: torch.Tensor | None = None,
               partials: bool = False) -> torch.Tensor:
        """[T, H]: the weighted sum of each token's k expert outputs, in two grouped launches (after
        `stack()`) from the tokens' int8 quantization (x_q [T, H], x_scale [T, 1]). The router
        weights are applied in the down projection's epilogue; the k outputs are summed in slot
        order (from GEMV_SUM_MIN_TOKENS decode tokens inside the down GEMV, `w4a8_moe_gemv_sum`), and
        `residual` [T, H] added to that sum if given. With `partials` (no residual), the sum's parts
        [S, T, H] for a consumer that sums them as `sum_slots` does (the next layer's norm,
        decode_step.py): the k weighted slot outputs as a [k, T, H] view, or the sum as [1, T, H]
        where the down GEMV summed them."""
        st, top_k = self.stacked, top_k_index.shape[1]
        group, down_group = self[0].gate_proj.group_size, self[0].down_proj.group_size
        if top_k_index.numel() <= GEMV_MAX_SLOTS and x_q.shape[1] % 4 == 0 and st["w13"].shape[1] % 8 == 0:
            if top_k_index.shape[0] >= GEMV_SUM_MIN_TOKENS:
                # int8 rows into the summed down GEMV: the glu path below took Qwen3-30B-A3B at batch
                # 16 from 2485 to 1940 tok/s (H100, decode_benchmark, one device call)
                h = w4a8_moe_gemv(x_q, x_scale, st["w13"], st["s13"], top_k_index, group, top_k, dtype)
                y = w4a8_moe_gemv_sum(*silu_mul_quant(h), st["w2"], st["s2"], top_k_index, down_group,
                                      top_k_weights, dtype, residual)
                return y[None] if partials else y
            # SiLU-mul in the gate/up GEMV's epilogue; the down GEMV quantizes its rows as it loads them
            act = w4a8_moe_gemv_glu(x_q, x_scale, st["w13"], st["s13"], top_k_index, group, top_k, dtype)
            y = w4a8_moe_gemv(*act, st["w2"], st["s2"], top_k_index, down_group, 1, dtype, top_k_weights)
        else:
            routing = route_by_expert(top_k_index, len(self))
            h = w4a8_moe_gemm(x_q, x_scale, st["w13"], st["s13"], routing, group, top_k, dtype)
            y = w4a8_moe_gemm(*silu_mul_quant(h), st["w2"], st["s2"], routing, down_group, 1, dtype, top_k_weights)
        if partials:  # [T * k, H] in (token, slot) order as [k, T, H]
            return y.view(-1, top_k, y.shape[1]).transpose(0, 1)
        return sum_slots(y, top_k, residual)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        n_tokens, top_k = top_k_index.shape
        if self.stacked is not None and triton_runs_on(hidden_states):
            weights = top_k_weights.to(hidden_states.dtype)
            return self.routed(*per_token_quant_int8(hidden_states), top_k_index, weights, hidden_states.dtype)
        flat = top_k_index.reshape(-1)  # [T*k] expert of each (token, slot)
        order = torch.argsort(flat, stable=True)  # slots grouped by expert
        counts = torch.bincount(flat, minlength=len(self)).tolist()
        x = hidden_states[order // top_k]  # [T*k, H] tokens gathered per expert
        y = torch.empty_like(x)
        start = 0
        for expert, count in zip(self, counts, strict=True):
            if count:
                seg = x[start:start + count]
                y[start:start + count] = expert.down_proj(self.act_fn(expert.gate_proj(seg)) * expert.up_proj(seg))
                start += count
        y = y * top_k_weights.reshape(-1)[order, None].to(y.dtype)
        out = torch.empty_like(y)
        out[order] = y  # back to (token, slot) order
        return out.reshape(n_tokens, top_k, -1).sum(dim=1)


# transformers 5.x routers whose forward `topk_softmax` computes (kernels/moe_routing.py), by class:
# the names pin the forward code it was checked against (tests/adapters/test_fast_decode.py)
ROUTERS = {"Qwen3MoeTopKRouter": "qwen3_moe", "Ernie4_5_MoeTopKRouter": "ernie4_5_moe"}
SPARSE_BLOCKS = {"Qwen3MoeSparseMoeBlock", "Ernie4_5_MoeSparseMoeBlock"}


class FusedSparseMoE(nn.Module):
    """transformers' sparse MoE block (Qwen3-MoE, Ernie-4.5-MoE) with the routing in one kernel.

    Per layer: `route` (at decode the router GEMV and then softmax, top-k, renormalization and cast
    in one more launch), the stacked experts (`W4A8Experts.routed`: router
    weights applied in the down projection's epilogue) on the int8 quantization that
    TritonRMSNorm attached to the input, and the shared experts if the block has them. Where
    transformers' block takes 6-8 launches of routing glue after its router GEMV and 3 of
    weighting and summing, this takes one of each (`topk_softmax`, `sum_slots`).
    `gate`, `experts` and `shared_experts` stay submodules by their names (same state dict); the
    router's own forward is not called, so `output_router_logits` does not see its logits.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.gate, self.experts = block.gate, block.experts
        self.shared_experts = getattr(block, "shared_experts", None)
        self.family = ROUTERS[type(block.gate).__name__]

    @staticmethod
    def fits(block: nn.Module) -> bool:
        experts = getattr(block, "experts", None)
        return (type(block).__name__ in SPARSE_BLOCKS and type(getattr(block, "gate", None)).__name__ in ROUTERS
                and isinstance(experts, W4A8Experts) and experts.stacked is not None)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] in x's dtype, expert ids [T, k] int32), the router's values."""
        gate = self.gate
        if self.family == "qwen3_moe":  # bf16 logits, softmax in fp32; renormalized when norm_topk_prob
            return route(x, gate.weight, gate.top_k, gate.norm_topk_prob, x.dtype)
        # Ernie: fp32 logits (fp32 router weight); the correction bias steers the choice;
        # weights / max(sum, moe_norm_min)
        return route(x, gate.weight.float(), gate.top_k, True, x.dtype, gate.moe_statics.e_score_correction_bias,
                     gate.norm_min)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None,
                partials: bool = False) -> torch.Tensor:
        """The block's output, or `residual + output` as the decoder layer adds it (the decode step:
        decode_step.py), in the last launch when the block has no shared experts. `partials`
        (Triton, no shared experts, no residual): the output's parts [S, T, H], unsummed
        (`W4A8Experts.routed`)."""
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        add_in_sum = residual is not None and self.shared_experts is None and triton_runs_on(x)
        if partials and (residual is not None or self.shared_experts is not None or not triton_runs_on(x)):
            raise ValueError("FusedSparseMoE gives partials on the Triton path only, without a residual or "
                             "shared experts")
        if triton_runs_on(x):
            weights, ids = self.route(x)
            x_q, x_scale = attached_int8(hidden_states) or per_token_quant_int8(x)
            y = self.experts.routed(x_q, x_scale, ids, weights, x.dtype,
                                    residual.reshape(x.shape) if add_in_sum else None, partials)
            if partials:
                return y
        else:
            _, weights, ids = self.gate(x)
            y = self.experts(x, ids, weights)
        if self.shared_experts is not None:  # on the 3-D input: its int8 quantization is attached there
            y = y + self.shared_experts(hidden_states).reshape(y.shape)
        y = y.reshape(hidden_states.shape)
        return residual + y if residual is not None and not add_in_sum else y
