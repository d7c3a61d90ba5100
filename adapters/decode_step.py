"""Qwen3's decode step: attention in four launches, and the decoder layer's two residual adds
in the epilogues of the launches before them.

transformers' Qwen3Attention.forward runs the q/k norms, the rotary embedding and the cache
update as separate torch ops; after fusion.py that was still ~25 kernels per layer, and a
Qwen3-8B W4A8 graph step spent more GPU time in them (launch latency, a few us each) than in the
GEMMs. `enable_decode_step(attn)` gives a fused attention module (q/k/v as one FusedProjection,
TritonRMSNorm q/k norms) a subclass whose forward takes this path for a StaticDecoder step (one
token per row, the static cache, the `wb_decode_slot` kwarg): the fused qkv GEMM,
`qk_norm_rope_store` (q/k norms, rotary embedding, K/V cache write), split-KV decode attention,
o_proj. It calls transformers' own forward for everything else (prefill, HF `generate`, CPU
without the interpreter).

`enable_decode_step_layer(layer)` does the same for the decoder layer around it: in a decode step
`h = x + attn(x)` is added by the post-attention RMSNorm's launch, which takes o_proj's split-K
partials, sums them as the reduction would, adds the residual, writes h and normalizes it
(`add_rmsnorm_quant`), and `h + mlp(h)` by the MLP's last launch (the down projection's GEMM, or
the MoE block's `sum_slots`), as torch would add them (each output rounded to bf16 first); at
batch 1 each residual add was a 1.9 us launch of its own (Qwen3-30B-A3B, H200), two per layer,
and o_proj's split-K reduction one more. The modules keep their class's attributes and
isinstance checks; only `__class__` changes.
"""

import torch
from torch import nn

from kernels.autotune import triton_runs_on
from kernels.decode_attention import decode_attention, decode_attention_fits
from kernels.fused_act import add_parts_ref
from kernels.linear import W4A8Linear, attach_absmax
from kernels.qk_rope import qk_norm_rope_store

from .static_decode import DECODE_SLOT, StaticKVCache


class DecodeStepAttention:
    """Mixin put before an HF attention class (see `enable_decode_step`)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        """transformers' forward, or the decode step; with `PARTIALS` (from DecodeStepLayer) the
        output as `W4A8Linear(partials=True)` gives it, [S, B, H]."""
        cache = kwargs.pop("cache", past_key_values)  # transformers 5.24 renamed past_key_values to cache
        partials = kwargs.pop(PARTIALS, False)
        slot = kwargs.get(DECODE_SLOT)
        if (slot is None or not isinstance(cache, StaticKVCache) or hidden_states.shape[1] != 1
                or not triton_runs_on(hidden_states)):
            out, weights = super().forward(hidden_states, position_embeddings, attention_mask, cache, **kwargs)
            return (out.reshape(1, -1, out.shape[-1]) if partials else out), weights
        b = hidden_states.shape[0]
        config = self.config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        qkv = self.qkv.linear(hidden_states, partials=True)  # split-K partials: qk_norm_rope_store sums them
        cos, sin = position_embeddings
        keys, values = cache.keys[self.layer_idx], cache.values[self.layer_idx]
        query = qk_norm_rope_store(qkv, self.q_norm.weight, self.k_norm.weight, self.q_norm.variance_epsilon,
                                   cos.view(b, -1), sin.view(b, -1), keys, values, slot, heads, kv_heads)
        out, head_absmax = decode_attention(query, keys, values, attention_mask, slot, self.scaling, absmax=True)
        out = out.view(b, 1, -1)
        attach_absmax(out, head_absmax)  # o_proj's GEMV quantizes the rows as it loads them
        return self.o_proj(out, partials=partials), None


class DecodeStepLayer:
    """Mixin put before an HF decoder layer class (see `enable_decode_step_layer`)."""

    defers_output = False  # set by `defer_layer_outputs` where the next layer takes the output's parts

    def forward(self, hidden_states, *args, **kwargs):
        if args or kwargs.get(DECODE_SLOT) is None or not triton_runs_on(hidden_states):
            return super().forward(summed_output(hidden_states), *args, **kwargs)
        pending = _pending(hidden_states)
        if pending is not None:  # the layer before left its MLP's parts: x = residual + sum, normalized
            hidden_states, x = self.input_layernorm.add_and_norm(*pending)
        else:
            x = self.input_layernorm(hidden_states)
        parts, _ = self.self_attn(hidden_states=x, **{PARTIALS: True}, **kwargs)
        h, x = self.post_attention_layernorm.add_and_norm(parts, hidden_states)
        if self.defers_output:
            return _deferred(self.mlp(x, partials=True), h)
        return self.mlp(x, residual=h)


# On a deferred layer output: (its _version, the MLP's parts [S, M, H], the residual h). The tensor
# itself is never written: only the next DecodeStepLayer reads it, through `_pending`.
PENDING_ATTR = "_wb_pending_sum"


def _deferred(parts: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(residual)
    setattr(out, PENDING_ATTR, (out._version, parts, residual))
    return out


def _pending(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    found = getattr(x, PENDING_ATTR, None)
    return found[1:] if found is not None and found[0] == x._version else None


def summed_output(x: torch.Tensor) -> torch.Tensor:
    """x itself, or for a deferred layer output the sum it stands for (in torch, as the next
    layer's norm would add it)."""
    pending = _pending(x)
    return x if pending is None else add_parts_ref(*pending)


PARTIALS = "wb_partials"  # attention kwarg: return o_proj's output as its split-K partials [S, B, H]
_subclasses: dict[type, type] = {}


def _give(module: nn.Module, mixin: type) -> None:
    cls = type(module)
    if not issubclass(cls, mixin):
        if cls not in _subclasses:
            _subclasses[cls] = type(f"{cls.__name__}DecodeStep", (mixin, cls), {})
        module.__class__ = _subclasses[cls]


def enable_decode_step(attn: nn.Module) -> bool:
    """Give `attn` the decode-step forward; fusion.py calls it on attention modules whose q/k/v
    it fused into `attn.qkv` and whose q/k norms it made TritonRMSNorms. Declined (False) unless
    the model is Qwen3's (rotate-half rotary embedding: Ernie-4.5 rotates interleaved pairs and
    has no q/k norms), both norms share one epsilon and the decode attention kernel takes the
    head shapes."""
    config = attn.config
    if (getattr(config, "model_type", "") not in ("qwen3", "qwen3_moe")
            or attn.q_norm.variance_epsilon != attn.k_norm.variance_epsilon):
        return False
    d = attn.head_dim
    query = torch.empty(1, config.num_attention_heads, 1, d, device="meta")
    if not decode_attention_fits(query, torch.empty(1, config.num_key_value_heads, 1, d, device="meta")):
        return False
    _give(attn, DecodeStepAttention)
    return True


def enable_decode_step_layer(layer: nn.Module) -> bool:
    """Give a decoder layer the decode-step forward (its residual adds in the post-attention
    norm's launch and the MLP's last launch). fusion.py calls it on layers whose attention has the
    decode step, whose MLP takes `residual=` (FusedMLP, FusedSparseMoE) and whose post-attention
    norm is a TritonRMSNorm (`add_and_norm`), and whose forward is transformers' pre-norm
    `x + attn(norm(x))`, then `h + mlp(norm(h))` (Qwen3, Qwen3-MoE). Declined (False) unless the
    attention has the decode step and a W4A8 o_proj and the norm can add."""
    if not (isinstance(layer.self_attn, DecodeStepAttention) and isinstance(layer.self_attn.o_proj, W4A8Linear)
            and hasattr(layer.post_attention_layernorm, "add_and_norm")):
        return False
    _give(layer, DecodeStepLayer)
    return True


def defer_layer_outputs(layers: nn.ModuleList) -> int:
    """Where a decode-step layer is followed by another whose input norm can add (TritonRMSNorm's
    `add_and_norm`), the first returns its MLP's output unsummed (split-K partials, or an MoE
    block's slot outputs) with its residual, and the second's input norm sums and adds them in its
    own launch: one launch fewer per deferring layer where that sum was a launch of its own (the
    down projection's split-K reduction, or `sum_slots`). The last layer's output, read by the
    model's final norm, stays a tensor. Returns how many defer."""
    count = 0
    for layer, after in zip(layers, layers[1:]):
        if (isinstance(layer, DecodeStepLayer) and isinstance(after, DecodeStepLayer)
                and getattr(layer.mlp, "shared_experts", None) is None
                and hasattr(after.input_layernorm, "add_and_norm")):
            layer.defers_output = True
            count += 1
    return count
