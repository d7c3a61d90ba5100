"""ERNIE-4.5-MoE (e.g. ERNIE-4.5-21B-A3B) W4A8 adapter.

Router kept exact and in fp32 with its e_score_correction_bias (the bias only selects experts;
weights come from the softmax, renormalized with clamp(min=moe_norm_min)); routed experts run
as `W4A8Experts`; the two shared experts (a plain MLP) are W4A8 linears added ungated; layer 0
is dense (moe_layer_start_index).
"""

import torch
from transformers import Ernie4_5_MoeForCausalLM

from .common import generate, load_family

__all__ = ["load_model", "generate"]

KEEP_FP32 = ("mlp.gate.weight", "e_score_correction_bias")
RENAMES = (("mlp.moe_statics.", "mlp.gate.moe_statics."),)  # checkpoint key -> transformers module path


def load_model(model_dir: str, device: str = "cpu", use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
               fuse: bool | None = None):
    return load_family(model_dir, Ernie4_5_MoeForCausalLM, "ernie4_5_moe", device, use_triton, dtype, KEEP_FP32,
                       RENAMES, fuse=fuse)
