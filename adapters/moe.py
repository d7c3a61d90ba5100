"""W4A8 routed experts: a drop-in for transformers 5.x fused expert modules.

transformers 5.x holds experts fused in memory (`experts.gate_up_proj [E, 2I, H]`,
`experts.down_proj [E, H, I]`) but checkpoints name them per expert
(`mlp.experts.<e>.gate_proj.weight`). `W4A8Experts` is an `nn.ModuleList` of per-expert
W4A8 MLPs, so its state dict keys are the checkpoint's, and its forward has the HF experts
signature `(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]`; the
router (kept exact, in HF's module) has already chosen the experts.

Tokens are sorted by expert and each expert runs once on all of its tokens (a loop over the
experts that received tokens, at most E launches, not one per token). The k expert outputs of
a token are summed in a fixed order, so repeated identical requests give identical bits
(`index_add_` on CUDA uses atomics, whose order varies).
"""

from typing import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN


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
        self.act_fn = ACT2FN[hidden_act]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        n_tokens, top_k = top_k_index.shape
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
