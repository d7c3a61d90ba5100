"""End-to-end benchmark: random-weight models with real Qwen3 shapes, W4A8 against bf16.

    python -m adapters.benchmark [--models qwen3-8b,qwen3-32b,qwen3-30b-a3b] [--device cuda]
    python -m adapters.benchmark --tiny --device cpu      # smoke run of the same code path

Each model is built directly in its final form (W4A8 buffers or bf16 weights, random values,
never a bf16 copy of a W4A8 model) and measured in one run, one variant at a time so that a
32B bf16 model and its W4A8 twin never share the GPU: build ("load") time, resident weight
GiB, prefill tokens/s (one 1024-token prompt), decode tokens/s at batch 1 and 16 (256 new
tokens, HF eager `generate` with its dynamic KV cache), and batch-1 seconds for 500 tokens,
the figure the seed workflow reported (Qwen3-32B: 51 s with its Triton path, 73 s without).
Every timing follows a warm-up on the same shapes (autotuning and compiles stay out of it), and
SDPA's cuDNN backend is off for all variants (`attention_backends`; --cudnn-sdpa allows it).
Variants: W4A8 Triton (on CUDA fused as load_model returns it: fusion.fuse_w4a8; --no-fuse keeps
the layers as loaded), W4A8 torch path, bf16 transformers.
"""

import argparse
import gc
import time

import torch
import transformers
from torch import nn

from .ernie4_5_moe import KEEP_FP32 as ERNIE_MOE_FP32
from .formats import QuantScheme
from .fusion import fuse_w4a8
from .loader import assign_tensor, finish_model, swap_quantized_modules, synchronize
from .tiny import make_config, model_class

SHAPES = {  # ../shared/REFERENCE.md; vocab 151936, untied lm_head for 8B/32B/30B-A3B
    "qwen3-8b": dict(cls="Qwen3Config", hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=12288),
    "qwen3-32b": dict(cls="Qwen3Config", hidden_size=5120, num_hidden_layers=64, num_attention_heads=64,
                      num_key_value_heads=8, head_dim=128, intermediate_size=25600),
    "qwen3-30b-a3b": dict(cls="Qwen3MoeConfig", hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
                          num_key_value_heads=4, head_dim=128, intermediate_size=6144, num_experts=128,
                          num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True),
}
VARIANTS = ("w4a8-triton", "w4a8-torch", "bf16")


def real_config(name: str) -> transformers.PretrainedConfig:
    spec = dict(SHAPES[name])
    cls = getattr(transformers, spec.pop("cls"))
    return cls(vocab_size=151936, tie_word_embeddings=False, max_position_embeddings=4096,
               rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **spec)


@torch.no_grad()
def build(config, variant: str, device: str, group_size: int = 128, fuse: bool = False) -> nn.Module:
    """The model with random weights, materialized tensor by tensor on `device`; `fuse` applies
    fusion.fuse_w4a8 to a W4A8 model, as load_model does on CUDA."""
    with torch.device("meta"):
        model = model_class(config)(config)
    if variant != "bf16":
        swap_quantized_modules(model, config, QuantScheme("awq-sym", group_size), variant == "w4a8-triton")
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_meta:
            continue
        if t.dtype == torch.int8:
            value = torch.randint(-128, 128, t.shape, dtype=torch.int8, device=device)
        elif name.endswith(".scales"):
            value = torch.rand(t.shape, device=device) * 2e-3
        elif name.endswith("norm.weight"):
            value = torch.ones(t.shape, dtype=torch.bfloat16, device=device)
        else:
            value = torch.randn(t.shape, device=device) * 0.02
            if not (config.model_type == "ernie4_5_moe" and any(f in name for f in ERNIE_MOE_FP32)):
                value = value.to(torch.bfloat16)  # Ernie-MoE's router stays fp32, as its adapter loads it
        assign_tensor(model, name, value)
    finish_model(model, config, device)
    if fuse and variant != "bf16":
        fuse_w4a8(model)
    return model


def attention_backends(allow_cudnn: bool):
    """SDPA backends for the measurement: flash, memory-efficient and math, not cuDNN.

    cuDNN attention builds (and caches, per process) an execution graph for every new sequence
    length, i.e. on every decode step of a growing KV cache: on the H100, in 3 decode steps of
    qwen3-8b, `aten::_cudnn_attention_forward` took 191 ms of CPU (1.8 ms a call, ~50 ms a step)
    for the variant measured first, and 6 ms (86 us a call) for the next variant in the same
    process, which found the graphs of the same lengths cached. That charged every new length to
    whichever variant ran first (W4A8) and hid it from bf16; without cuDNN all variants pay the
    same, shape-independent attention cost.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(backends + [SDPBackend.CUDNN_ATTENTION] if allow_cudnn else backends)


def _timed(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def measure(model: nn.Module, device: str, prompt: int, new_tokens: int, batches: tuple[int, ...],
            long_tokens: int) -> dict:
    vocab = model.config.vocab_size
    row = {"weight_GiB": sum(t.numel() * t.element_size() for t in {id(t): t for t in
                             list(model.parameters()) + list(model.buffers())}.values()) / 2**30}
    ids = torch.randint(0, vocab, (1, prompt), device=device)
    # Warm up on the exact shapes that are timed: autotuning and Triton compiles are keyed on the
    # M bucket (1024 here), so a 16-token warm-up left them inside the timed prefill (H100,
    # qwen3-8b W4A8: 13.5 s for the first 1024-token call, 0.13 s for the second).
    model(ids)
    row["prefill_tok_s"] = prompt / _timed(lambda: model(ids), device)

    def gen(batch: int, n: int):
        short = torch.randint(0, vocab, (batch, 16), device=device)
        return lambda: model.generate(input_ids=short, attention_mask=torch.ones_like(short), do_sample=False,
                                      max_new_tokens=n, min_new_tokens=n, pad_token_id=0)

    for batch in batches:
        gen(batch, 4)()  # warm-up for this batch's shapes
        row[f"decode_b{batch}_tok_s"] = batch * new_tokens / _timed(gen(batch, new_tokens), device)
    row[f"b1_{long_tokens}_tokens_s"] = _timed(gen(1, long_tokens), device)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny cpu-tier configs and few tokens (smoke run)")
    parser.add_argument("--no-fuse", action="store_true",
                        help="keep the W4A8 Triton layers as loaded (default: fused on CUDA, as load_model does)")
    parser.add_argument("--cudnn-sdpa", action="store_true",
                        help="let SDPA pick cuDNN attention (off by default: see attention_backends)")
    args = parser.parse_args(argv)
    prompt, new, batches, long = (1024, 256, (1, 16), 500) if not args.tiny else (32, 4, (1, 2), 6)
    models = ["qwen3", "qwen3_moe"] if args.tiny else args.models.split(",")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {device_name} | torch {torch.__version__} | transformers {transformers.__version__}")
    rows = []
    for name in models:
        config = make_config(name) if args.tiny else real_config(name)
        for variant in args.variants.split(","):
            start = time.perf_counter()
            try:
                fuse = variant == "w4a8-triton" and args.device.startswith("cuda") and not args.no_fuse
                model = build(config, variant, args.device, 32 if args.tiny else 128, fuse)
                synchronize(args.device)
                row = {"model": name, "variant": variant, "load_s": time.perf_counter() - start}
                with attention_backends(args.cudnn_sdpa):
                    row.update(measure(model, args.device, prompt, new, batches, long))
            except torch.cuda.OutOfMemoryError:
                row = {"model": name, "variant": variant, "note": "out of GPU memory"}
            rows.append(row)
            print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            model = None
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"\n{device_name}, torch {torch.__version__}, transformers {transformers.__version__}\n")
    print(markdown_table(rows))
    return rows


def markdown_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("model", "variant")] if rows else []
    lines = ["| model | variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for row in rows:
        cells = [f"{row[k]:.2f}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append(f"| {row['model']} | {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
