"""Qwen3-MoE (e.g. Qwen3-30B-A3B) W4A8 adapter.

Attention as Qwen3; routed experts run as `W4A8Experts` (tokens gathered per expert). The
router is transformers' own (softmax in fp32 over all experts, top-k, renormalized when
norm_topk_prob); no shared expert; dense layers where mlp_only_layers / decoder_sparse_step say.
"""

import torch
from transformers import Qwen3MoeForCausalLM

from .common import generate, load_family

__all__ = ["load_model", "generate"]


def load_model(model_dir: str, device: str = "cpu", use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
               fuse: bool | None = None):
    return load_family(model_dir, Qwen3MoeForCausalLM, "qwen3_moe", device, use_triton, dtype, fuse=fuse)
