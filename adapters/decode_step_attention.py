"""Qwen3 attention's decode step in four launches: the fused qkv GEMM, `qk_norm_rope_store`
(q/k norms, rotary embedding, K/V cache write), split-KV decode attention, o_proj.

transformers' Qwen3Attention.forward runs the q/k norms, the rotary embedding and the cache
update as separate torch ops; after fusion.py that was still ~25 kernels per layer, and a
Qwen3-8B W4A8 graph step spent more GPU time in them (launch latency, a few us each) than in the
GEMMs. `enable_decode_step(attn)` gives a fused attention module (q/k/v as one FusedProjection,
TritonRMSNorm q/k norms) a subclass whose forward takes this path for a StaticDecoder step (one
token per row, the static cache, the `wb_decode_slot` kwarg) and calls transformers' own forward
for everything else (prefill, HF `generate`, CPU without the interpreter). The module keeps its
class's attributes and isinstance checks; only `__class__` changes.
"""

import torch
from torch import nn

from kernels.autotune import triton_runs_on
from kernels.decode_attention import decode_attention, decode_attention_fits
from kernels.qk_rope import qk_norm_rope_store

from .static_decode import DECODE_SLOT, StaticKVCache


class DecodeStepAttention:
    """Mixin put before an HF attention class (see `enable_decode_step`)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        cache = kwargs.pop("cache", past_key_values)  # transformers 5.24 renamed past_key_values to cache
        slot = kwargs.get(DECODE_SLOT)
        if (slot is None or not isinstance(cache, StaticKVCache) or hidden_states.shape[1] != 1
                or not triton_runs_on(hidden_states)):
            return super().forward(hidden_states, position_embeddings, attention_mask, cache, **kwargs)
        b = hidden_states.shape[0]
        config = self.config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        qkv = self.qkv.linear(hidden_states).view(b, -1)
        cos, sin = position_embeddings
        keys, values = cache.keys[self.layer_idx], cache.values[self.layer_idx]
        query = qk_norm_rope_store(qkv, self.q_norm.weight, self.k_norm.weight, self.q_norm.variance_epsilon,
                                   cos.view(b, -1), sin.view(b, -1), keys, values, slot, heads, kv_heads)
        out = decode_attention(query, keys, values, attention_mask, slot, self.scaling)
        return self.o_proj(out.view(b, 1, -1)), None


_subclasses: dict[type, type] = {}


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
    cls = type(attn)
    if not issubclass(cls, DecodeStepAttention):
        if cls not in _subclasses:
            _subclasses[cls] = type(f"{cls.__name__}DecodeStep", (DecodeStepAttention, cls), {})
        attn.__class__ = _subclasses[cls]
    return True
