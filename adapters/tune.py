"""Tune the W4A8 GEMM launch configs of whole models up front, with a progress bar.

    python -m adapters.tune [--models qwen3-8b,qwen3-32b,qwen3-30b-a3b] [--model-dir DIR]
                            [--m 1,2,4,...,4096] [--group 128] [--ship]

Each model is built with random weights at its real layer shapes (two decoder layers: every
layer of a family has the shapes of one of the first two, Ernie-MoE's dense layer 0 included),
fused as `load_model` fuses it on CUDA, and run forward once per M bucket ([1, M] tokens: the
same GEMM keys as a prefill of M tokens or a decode step of M rows). With WB_AUTOTUNE=force every
GEMM key met is timed once, whatever is cached or shipped, and lands in the user cache
(kernels/autotune.py). `--ship` also merges them into kernels/tuned/<gpu>.json, the configs the
package ships for this GPU: on a GPU with a shipped file, nothing is tuned at run time.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kernels import autotune

from .benchmark import SHAPES, build, real_config
from .formats import parse_quant_config
from .loader import synchronize

M_BUCKETS = tuple(2**i for i in range(13))  # 1 .. 4096 = autotune.M_BUCKET_MAX


def ship(tuned: dict[str, dict], gpu_name: str, shipped_dir: Path = autotune.SHIPPED_DIR) -> Path:
    """Merge `tuned` into the shipped configs of `gpu_name` (new entries win); returns the file."""
    path = shipped_dir / autotune.gpu_file_name(gpu_name)
    merged = {**autotune.read_configs(path), **tuned}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return path


def model_config(name_or_dir: str, group_size: int):
    """(config cut to two decoder layers, weight group size) of a preset of
    adapters.benchmark.SHAPES, or of a checkpoint directory (its own group size when quantized)."""
    if name_or_dir in SHAPES:
        config = real_config(name_or_dir)
    else:
        from transformers import AutoConfig

        config_json = Path(name_or_dir) / "config.json"
        if not config_json.exists():
            raise SystemExit(f"{name_or_dir}: neither a preset ({', '.join(SHAPES)}) nor a checkpoint "
                             "directory with a config.json")
        config = AutoConfig.from_pretrained(name_or_dir)
        if getattr(config, "quantization_config", None):
            group_size = parse_quant_config(json.loads(config_json.read_text()), str(config_json)).group_size
    config.num_hidden_layers = min(config.num_hidden_layers, 2)
    return config, group_size


@torch.no_grad()
def tune(models: list[str], ms: tuple[int, ...], group_size: int, console: Console,
         device: str = "cuda") -> dict[str, dict]:
    """Run every model forward at every M with WB_AUTOTUNE=force; returns the keys timed in this
    process and their configs (none off a GPU: the interpreter takes the first candidate)."""
    os.environ["WB_AUTOTUNE"] = "force"
    tuned = autotune.config_cache(torch.device(device)).tuned if device == "cuda" else {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[keys]} GEMM keys tuned"))
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("tuning", total=len(models) * len(ms), keys=0)
        for name in models:
            config, group = model_config(name, group_size)
            model = build(config, "w4a8-triton", device, group, fuse=True)
            for m in ms:
                progress.update(bar, description=f"{Path(name).name} M={m}")
                tokens = torch.randint(0, config.vocab_size, (1, min(m, config.max_position_embeddings)))
                model(tokens.to(device), logits_to_keep=1)  # lm_head is bf16: nothing to tune there
                synchronize(device)
                progress.update(bar, advance=1, keys=len(tuned))
            del model
    return dict(tuned)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SHAPES), help=f"comma-separated presets from {list(SHAPES)}")
    parser.add_argument("--model-dir", action="append", default=[], help="a checkpoint directory (repeatable)")
    parser.add_argument("--m", default=",".join(map(str, M_BUCKETS)), help="comma-separated M values")
    parser.add_argument("--group", type=int, default=128,
                        help="weight group size (-1: per channel) of the presets and of unquantized checkpoints")
    parser.add_argument("--ship", action="store_true", help="merge the result into kernels/tuned/<gpu>.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("adapters.tune times kernels on a CUDA GPU; none is visible here")
    models = [m for m in args.models.split(",") if m] + args.model_dir
    ms = tuple(int(m) for m in args.m.split(","))
    console = Console(stderr=True)
    gpu = torch.cuda.get_device_name()
    start = time.perf_counter()
    tuned = tune(models, ms, args.group, console)
    console.print(f"{gpu}: {len(tuned)} GEMM keys tuned in {time.perf_counter() - start:.0f} s, "
                  f"kept in {autotune.config_cache(torch.device('cuda')).path}")
    if args.ship:
        console.print(f"shipped: {ship(tuned, gpu)}")


if __name__ == "__main__":
    main()
