"""ERNIE-4.5 dense (e.g. ERNIE-4.5-0.3B) W4A8 adapter.

transformers' Ernie4_5 modules keep the quirks: rope on interleaved pairs (2i, 2i+1), theta
5e5, tied embeddings, no bias.
"""

import torch
from transformers import Ernie4_5ForCausalLM

from .common import generate, load_family

__all__ = ["load_model", "generate"]


def load_model(model_dir: str, device: str = "cpu", use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
               fuse: bool | None = None):
    return load_family(model_dir, Ernie4_5ForCausalLM, "ernie4_5", device, use_triton, dtype, fuse=fuse)
