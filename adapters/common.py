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

from .fusion import fuse_w4a8
from .loader import load_quantized
from .static_decode import static_generate


def load_family(model_dir: str | Path, model_cls: type, model_type: str, device: str | torch.device = "cpu",
                use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
                keep_fp32: tuple[str, ...] = (), renames: tuple[tuple[str, str], ...] = (),
                fuse: bool | None = None) -> nn.Module:
    """The loaded model; `fuse` (default: on CUDA with use_triton) applies fusion.fuse_w4a8."""
    config_path = Path(model_dir) / "config.json"
    found = json.loads(config_path.read_text()).get("model_type") if config_path.exists() else None
    if found is not None and found != model_type:
        raise ValueError(f"{config_path}: model_type is {found!r}, this adapter loads {model_type!r}")
    model, report = load_quantized(model_dir, model_cls, device, use_triton, dtype, keep_fp32, renames)
    model.load_report = report
    if fuse if fuse is not None else (use_triton and torch.device(device).type == "cuda"):
        fuse_w4a8(model)
    return model


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
             attention_mask: torch.Tensor | None = None, cuda_graphs: bool = True, streamer=None) -> torch.Tensor:
    """Greedy decoding: [B, T] prompt ids -> [B, T + new] ids (stops early at EOS, padded).

    On CUDA (cuda_graphs=True) with a static KV cache and decode steps replayed from a CUDA graph
    (static_decode.py); otherwise HF `generate` with its dynamic cache. The same greedy decoding either
    way (tokens can differ only where two logits tie within rounding). `streamer` (HF's
    `put`/`end` protocol, batch 1) receives the prompt, then each token as it is decoded."""
    device = next(model.buffers()).device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    if cuda_graphs and device.type == "cuda":
        if streamer is not None:
            streamer.put(input_ids.cpu())
        out = static_generate(model, input_ids, max_new_tokens, attention_mask, True,
                              model.generation_config.eos_token_id, pad,
                              on_token=streamer.put if streamer is not None else None)
        if streamer is not None:
            streamer.end()
        return out
    return model.generate(input_ids=input_ids, attention_mask=attention_mask.to(device), max_new_tokens=max_new_tokens,
                          do_sample=False, pad_token_id=pad, streamer=streamer)
