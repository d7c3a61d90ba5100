"""Decode benchmark: 500 new tokens at batch 1 and 16, this project's W4A8 path against bf16.

    python -m adapters.decode_benchmark [--models qwen3-8b,qwen3-32b,qwen3-30b-a3b] [--new-tokens 500]
    python -m adapters.decode_benchmark --prompt-tokens 4096   # also the time to first token of a long prompt
    python -m adapters.decode_benchmark --tiny --device cpu     # smoke run of the same code path

Random-weight models with the real Qwen3 shapes (benchmark.py builds them), one variant on the
GPU at a time, each timed after a warm-up on the same shapes (16-token prompt, greedy, every
token generated: no early EOS):
- w4a8-graph: this path: fused W4A8 layers (fusion.py), static KV cache, decode steps replayed
  from a CUDA graph (static_decode.py);
- w4a8-eager: the same fused W4A8 layers, HF `generate` (dynamic cache, eager): what
  `adapters.infer --no-cuda-graph` runs;
- bf16: transformers eager `generate`;
- bf16-compile: transformers `generate` with its static cache, which compiles the decode step
  (torch.compile, mode reduce-overhead: CUDA graphs) on CUDA;
- first token (--prompt-tokens N): the prefill of one N-token prompt and its first greedy token,
  through the variant's own generate call (w4a8-graph: static_generate's eager prefill, what
  `adapters.infer` runs before its decode graph; bf16: transformers `generate`), on CUDA timed
  after a warm-up of the same length;
- floor: the bytes a decode step must read (weights; for MoE the shared part plus the experts
  that batch's tokens can reach) divided by the copy bandwidth measured in the same run: no
  engine decodes faster, at any batch where weights dominate.
"""

import argparse
import gc
import time

import torch
import transformers

from .benchmark import SHAPES, _timed, attention_backends, build, real_config
from .loader import synchronize
from .static_decode import static_generate
from .tiny import make_config

VARIANTS = ("w4a8-graph", "w4a8-eager", "bf16", "bf16-compile")


def copy_bandwidth(device: str, n_bytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), best of 5."""
    src = torch.empty(n_bytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return n_bytes / best


def step_bytes(model: torch.nn.Module, batch: int) -> float:
    """Weight bytes one decode step reads: everything but the embedding table (one row is read)
    and, for routed experts, the expected share reached by batch * k random routes."""
    config = model.config
    total = experts = 0
    for name, t in {id(t): (n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers())}.values():
        size = t.numel() * t.element_size()
        if "embed_tokens" in name:
            continue
        total += size
        if ".experts." in name or name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            experts += size
    n_experts = getattr(config, "num_experts", None) or getattr(config, "moe_num_experts", None)
    if experts and n_experts:
        k = config.num_experts_per_tok
        reached = 1 - (1 - k / n_experts) ** batch
        total = total - experts + experts * reached
    return total


def decode_fn(model, variant: str, batch: int, new_tokens: int, device: str, prompt_tokens: int = 16):
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt_tokens), device=device)
    mask = torch.ones_like(ids)
    if variant == "w4a8-graph":
        return lambda: static_generate(model, ids, new_tokens, mask, use_graph=True)
    extra = {"cache_implementation": "static"} if variant == "bf16-compile" else {}
    return lambda: model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, pad_token_id=0, **extra)


def profile_step(model, batch: int, device: str, top: int = 25) -> str:
    """GPU time per kernel of one decode step (run eagerly: the kernels a graph replays), as a
    torch profiler table; the model has decoded at this batch before (its StaticDecoder exists)."""
    decoder = model._static_decoder
    decoder.step()
    return profile_calls(lambda: [decoder.step() for _ in range(3)], device, top)


def profile_calls(fn, device: str, top: int = 25) -> str:
    """Time per kernel of one call of `fn` (already warmed up), as a torch profiler table."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    cuda = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        synchronize(device)
    return prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=top)


@torch.no_grad()
def run_variant(config, variant: str, device: str, batches: tuple[int, ...], new_tokens: int, group: int,
                bandwidth: float, profile: bool = False, prompt_tokens: int = 0) -> list[dict]:
    model = build(config, "bf16" if variant.startswith("bf16") else "w4a8-triton", device, group,
                  fuse=variant.startswith("w4a8"))
    rows = []
    if prompt_tokens:
        # one new token: the prefill and its argmax (static_generate captures no graph for it)
        first_token = decode_fn(model, variant, 1, 1, device, prompt_tokens)
        if device.startswith("cuda"):
            first_token()  # warm-up: tuning and compiles at the prompt's M
        seconds = _timed(first_token, device)
        rows.append({"variant": f"{variant.split('-')[0]} first token ({prompt_tokens}-token prompt)", "batch": 1,
                     "seconds": seconds, "tok_s": prompt_tokens / seconds})
        print(f"{rows[-1]['variant']} | seconds {seconds:.3f}", flush=True)
        if profile:
            print(f"profile of the {prompt_tokens}-token prefill, {variant}:")
            print(profile_calls(first_token, device))
    for batch in batches:
        row = {"variant": variant, "batch": batch}
        start = time.perf_counter()
        # warm-up: tuning and plans; graph capture and compiles are per cache length, so the
        # static-cache variants warm up on the full length
        decode_fn(model, variant, batch, 8 if variant in ("w4a8-eager", "bf16") else new_tokens, device)()
        row["warmup_s"] = time.perf_counter() - start
        seconds = _timed(decode_fn(model, variant, batch, new_tokens, device), device)
        row.update(seconds=seconds, tok_s=batch * new_tokens / seconds)
        if variant.startswith("w4a8") or variant == "bf16":
            floor = new_tokens * step_bytes(model, batch) / bandwidth
            rows.append({"variant": f"floor ({'w4a8' if variant.startswith('w4a8') else 'bf16'})", "batch": batch,
                         "seconds": floor, "tok_s": batch * new_tokens / floor})
        rows.append(row)
        if profile and variant == "w4a8-graph":
            print(f"profile of 3 decode steps, batch {batch} (eager replay of the captured step):")
            print(profile_step(model, batch, device))
        print(" | ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated, from {list(SHAPES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=500)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny cpu-tier configs and few tokens (smoke run)")
    parser.add_argument("--prompt-tokens", type=int, default=0,
                        help="also time the first token of a prompt this long (batch 1), W4A8 against bf16")
    parser.add_argument("--profile", action="store_true",
                        help="print a kernel profile of w4a8-graph decode steps (and of each variant's prefill "
                             "with --prompt-tokens)")
    args = parser.parse_args(argv)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    bandwidth = copy_bandwidth(args.device, 2 << 30 if args.device.startswith("cuda") else 64 << 20)
    print(f"device: {device_name} | copy bandwidth {bandwidth / 1e9:.0f} GB/s | torch {torch.__version__} | "
          f"transformers {transformers.__version__}", flush=True)
    models = ["qwen3", "qwen3_moe"] if args.tiny else args.models.split(",")
    batches = tuple(int(b) for b in args.batches.split(","))
    new_tokens = 4 if args.tiny else args.new_tokens
    rows = []
    for name in models:
        config = make_config(name) if args.tiny else real_config(name)
        for variant in args.variants.split(","):
            try:
                got = run_variant(config, variant, args.device, batches, new_tokens, 32 if args.tiny else 128,
                                  bandwidth, args.profile, args.prompt_tokens)
            except torch.cuda.OutOfMemoryError:
                got = [{"variant": variant, "note": "out of GPU memory"}]
            rows += [{"model": name, **row} for row in got if not any(
                r.get("model") == name and r["variant"] == row["variant"] and r.get("batch") == row.get("batch")
                for r in rows)]
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"\n{device_name}, {new_tokens} new tokens, torch {torch.__version__}, "
          f"transformers {transformers.__version__}\n")
    print(markdown_table(rows))
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | variant | batch | seconds | tokens/s |", "|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["model"], r.get("batch", 0))):
        if "note" in row:
            lines.append(f"| {row['model']} | {row['variant']} | | {row['note']} | |")
        else:
            lines.append(f"| {row['model']} | {row['variant']} | {row['batch']} | {row['seconds']:.2f} | "
                         f"{row['tok_s']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with attention_backends(False):
        main()
