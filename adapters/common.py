"""What the four family adapters share: the port contract's `load_model` and `generate`.

Contract (../shared/ARCHITECTURE.md, "Model adapter contract"): `load_model(model_dir,
device, use_triton)` returns a module whose forward(input_ids, attention_mask) gives logits
[B, T, V] (HF output with `.logits`), and `generate(model, input_ids, max_new_tokens)` runs
greedy decoding through the HF generation path (KV cache).
"""

import json
from pathlib import Path

import torch
from torch import nn

from .loader import load_quantized


def load_family(model_dir: str | Path, model_cls: type, model_type: str, device: str | torch.device = "cpu",
                use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
                keep_fp32: tuple[str, ...] = (), renames: tuple[tuple[str, str], ...] = ()) -> nn.Module:
    config_path = Path(model_dir) / "config.json"
    found = json.loads(config_path.read_text()).get("model_type") if config_path.exists() else None
    if found is not None and found != model_type:
        raise ValueError(f"{config_path}: model_type is {found!r}, this adapter loads {model_type!r}")
    model, report = load_quantized(model_dir, model_cls, device, use_triton, dtype, keep_fp32, renames)
    model.load_report = report
    return model


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy decoding: [B, T] prompt ids -> [B, T + new] ids (stops early at EOS, padded)."""
    device = next(model.buffers()).device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return model.generate(input_ids=input_ids, attention_mask=attention_mask.to(device), max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=pad)
