"""Run a W4A8 checkpoint: chat template, streamed output, timing.

    python -m adapters.infer --model-dir DIR --prompt "..." [--system "..."] \
        [--max-new-tokens 500] [--use-triton|--no-triton] [--device cuda] [--no-cuda-graph]

The family adapter is picked from config.json's model_type. The chat template is applied when
the tokenizer has one; tokens are streamed as they are decoded; load time, prefill and decode
time and decode tokens/s are printed at the end (to stderr, so stdout holds only the text).
On CUDA, decoding uses a static KV cache and CUDA-graph decode steps (static_decode.py) and the
W4A8 layers are fused (fusion.py); --no-cuda-graph runs HF `generate` instead.
"""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, TextStreamer

from .common import generate
from .loader import synchronize

ADAPTERS = {"qwen3": "adapters.qwen3", "qwen3_moe": "adapters.qwen3_moe", "ernie4_5": "adapters.ernie4_5",
            "ernie4_5_moe": "adapters.ernie4_5_moe"}


def adapter_for(model_dir: str | Path):
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise SystemExit(f"{model_dir}: no config.json (not a checkpoint directory)")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type not in ADAPTERS:
        raise SystemExit(f"{config_path}: model_type {model_type!r} has no adapter; supported: {sorted(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[model_type])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--system", default=None, help="system prompt (chat template only)")
    parser.add_argument("--max-new-tokens", type=int, default=500)
    parser.add_argument("--use-triton", dest="use_triton", action="store_true", default=True,
                        help="run the Triton W4A8 kernels (default)")
    parser.add_argument("--no-triton", dest="use_triton", action="store_false", help="run the torch path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                        help="decode with HF generate (dynamic cache, eager) instead of CUDA graphs")
    args = parser.parse_args(argv)

    adapter = adapter_for(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    t0 = time.perf_counter()
    model = adapter.load_model(args.model_dir, args.device, use_triton=args.use_triton)
    synchronize(args.device)
    load_s = time.perf_counter() - t0
    if tokenizer.chat_template:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": args.prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = (args.system + "\n\n" if args.system else "") + args.prompt
    input_ids = tokenizer(text, return_tensors="pt").input_ids.to(args.device)

    streamer = _TimedStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    t1 = time.perf_counter()
    out = generate(model, input_ids, args.max_new_tokens, cuda_graphs=args.cuda_graph, streamer=streamer)
    synchronize(args.device)
    t_end = time.perf_counter()
    new = out.shape[1] - input_ids.shape[1]
    first = streamer.t_first_token or t_end
    decode_tps = (new - 1) / (t_end - first) if new > 1 and t_end > first else float("nan")
    print(f"\n[{Path(args.model_dir).name}] {'triton' if args.use_triton else 'torch'} on {args.device}: "
          f"load {load_s:.2f} s, prompt {input_ids.shape[1]} tokens, first token {(first - t1) * 1e3:.0f} ms, "
          f"{new} new tokens in {t_end - t1:.2f} s ({decode_tps:.1f} tok/s decode)", file=sys.stderr)


class _TimedStreamer(TextStreamer):
    """TextStreamer that notes when the first generated token arrives (its first put is the prompt)."""

    t_first_token: float | None = None
    _puts = 0

    def put(self, value):
        self._puts += 1
        if self._puts == 2:
            self.t_first_token = time.perf_counter()
        super().put(value)

if __name__ == "__main__":
    main()
