"""Config sweep for the W4A8 GEMM: every candidate launch config, then warp/stage variants of
the three fastest, timed on the GPU and checked against the reference.

    python -m kernels.config_sweep [decode|prefill|all]

Prints, per shape, the bf16 time and the six fastest configs. This is the evidence behind the
candidate lists in `w4a8_gemm.candidate_configs` and the "what holds the rest back" section of
the README. Times include per-token activation quantization, as `w4a8_gemm` does.
"""

import itertools
import sys

import torch

from .act_quant import per_token_quant_int8
from .autotune import graph_ms
from .packing import pack_w4a8
from .reference import quantize_weight, w4a8_linear_ref
from .w4a8_gemm import _launch, candidate_configs, sm_count

SHAPES = [  # M, N, K, group_size: Qwen3-8B / 30B-A3B layers
    (1, 24576, 4096, 128), (4, 24576, 4096, 128), (1, 4096, 12288, 128), (16, 24576, 4096, 128),
    (1, 6144, 4096, -1), (1, 5120, 2048, 128),
    (4096, 24576, 4096, 128), (1024, 6144, 4096, -1), (256, 24576, 4096, 128),
]


def graph_us(fn, calls: int = 10) -> float:
    return graph_ms([fn], calls, warmup_ms=10, rep_ms=40) * 1e3


def sweep(m: int, n: int, k: int, group_size: int) -> None:
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    q, s = quantize_weight(w, group_size)
    packed, scales = pack_w4a8(q, group_size), s.t().contiguous()
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = w4a8_linear_ref(x[:4], q, s).float()
    t_bf16 = graph_us(lambda: x @ w.t())
    results = []

    def run(cfg: dict) -> None:
        def step():
            x_q, x_scale = per_token_quant_int8(x)
            return _launch(x_q, x_scale, packed, scales, None, group_size, torch.bfloat16, cfg)

        err = ((step()[:4].float() - ref).abs().max() / ref.abs().max()).item()
        results.append((graph_us(step), err, cfg))

    for cfg in candidate_configs(m, n, k, group_size, sm_count(torch.device("cuda"))):
        run(cfg)
    results.sort(key=lambda r: r[0])
    for _, _, cfg in results[:3]:
        for warps, stages in itertools.product((2, 4, 8), (1, 2, 3, 4, 6)):
            variant = dict(cfg, num_warps=warps, num_stages=stages)
            if all(variant != r[2] for r in results):
                run(variant)
    results.sort(key=lambda r: r[0])
    print(f"M={m} N={n} K={k} group={group_size}: bf16 {t_bf16:.1f} us, {len(results)} configs", flush=True)
    for t, err, cfg in results[:6]:
        print(f"   {t:8.1f} us  x{t_bf16 / t:4.2f} vs bf16  rel err {err:.1e}  {cfg}", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    for shape in SHAPES:
        if which == "all" or (which == "decode") == (shape[0] <= 16):
            sweep(*shape)
