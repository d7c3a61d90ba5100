"""Qwen3 dense (e.g. Qwen3-0.6B, 8B, 32B) W4A8 adapter.

Quirks kept by using transformers' own Qwen3 modules: per-head RMSNorm q_norm/k_norm after the
q/k projections and before RoPE (kept in high precision, loaded like any norm), no qkv bias,
explicit head_dim (16 * 128 != 1024 in Qwen3-0.6B), NeoX half rotation, theta 1e6.
"""

import torch
from transformers import Qwen3ForCausalLM

from .common import generate, load_family

__all__ = ["load_model", "generate"]


def load_model(model_dir: str, device: str = "cpu", use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
               fuse: bool | None = None):
    return load_family(model_dir, Qwen3ForCausalLM, "qwen3", device, use_triton, dtype, fuse=fuse)
