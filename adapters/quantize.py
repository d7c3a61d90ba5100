"""Offline W4A8 quantization of an HF checkpoint, shard by shard.

    python -m adapters.quantize --model-dir HF_DIR --out OUT_DIR --group-size -1|32|64|128 \
        --format awq-sym|compressed-tensors

Reads one safetensors shard at a time (a 32B model never sits in memory whole), quantizes every
linear the W4A8 contract names (attention, MLP, routed experts by their on-disk per-expert keys,
shared experts) with `kernels.quantize_weight`, keeps embeddings, lm_head, norms, routers and
Ernie's correction bias as they are, and writes one output shard per input shard, an index,
config.json with `quantization_config`, and the tokenizer and generation files.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from rich.progress import Progress
from safetensors import safe_open
from safetensors.torch import save_file

from kernels.reference import quantize_weight

from .formats import FORMATS, from_quantized, is_quantized_layer, quant_config

INDEX_FILE = "model.safetensors.index.json"


def list_shards(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files, in index order when there is an index."""
    index = model_dir / INDEX_FILE
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as err:
            raise ValueError(f"{index}: not a valid safetensors index ({err})") from err
        return [model_dir / name for name in names]
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    return shards


def quantize_tensor(key: str, weight: torch.Tensor, group_size: int, fmt: str, where: str) -> dict[str, torch.Tensor]:
    layer = key.removesuffix(".weight")
    try:
        q, scales = quantize_weight(weight, group_size)
        return {f"{layer}.{suffix}": t for suffix, t in from_quantized(fmt, q, scales).items()}
    except ValueError as err:
        raise ValueError(f"{where}: tensor {key} {tuple(weight.shape)}: {err}") from err


def quantize_checkpoint(model_dir: str | Path, out_dir: str | Path, group_size: int = -1, fmt: str = "awq-sym",
                        show_progress: bool = True) -> Path:
    """Write the W4A8 checkpoint of `model_dir` to `out_dir` and return `out_dir`."""
    src, out = Path(model_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    config = json.loads((src / "config.json").read_text())
    if "quantization_config" in config or "compression_config" in config:
        raise ValueError(f"{src / 'config.json'}: already quantized; give the bf16/fp16 checkpoint")
    shards = list_shards(src)
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    with Progress(disable=not show_progress) as progress:
        task = progress.add_task("quantizing", total=len(shards))
        for shard in shards:
            tensors = {}
            with safe_open(shard, framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    if key.endswith(".weight") and t.dim() == 2 and is_quantized_layer(key.removesuffix(".weight")):
                        tensors.update(quantize_tensor(key, t, group_size, fmt, shard.name))
                    else:
                        tensors[key] = t
            save_file(tensors, out / shard.name, metadata={"format": "pt"})
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            weight_map.update({key: shard.name for key in tensors})
            progress.advance(task)
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config["quantization_config"] = quant_config(fmt, group_size)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for extra in src.iterdir():  # tokenizer, chat template, generation config
        if extra.is_file() and extra.suffix != ".safetensors" and extra.name not in ("config.json", INDEX_FILE):
            shutil.copy2(extra, out / extra.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="bf16/fp16 HF checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--group-size", type=int, default=-1, choices=(-1, 32, 64, 128))
    parser.add_argument("--format", default="awq-sym", choices=FORMATS)
    args = parser.parse_args()
    print(quantize_checkpoint(args.model_dir, args.out, args.group_size, args.format))


if __name__ == "__main__":
    main()
