"""Benchmark: W4A8 GEMM against cuBLAS bf16, torch._int_mm W8A8 and the roofline, one run, one GPU.

    python -m kernels.benchmark [--group-size 128] [--m 1,4,16,64,256,1024,4096] [--out FILE.json]

For each layer (real Qwen3-8B / 32B / 30B-A3B shapes) and M it prints microseconds for
- bf16:   `x @ w.t()` (cuBLAS), x and w bf16;
- int_mm: `torch._int_mm(x_q, w_t)` with w_t column-major [K, N] (GEMM only: no activation
  quantization, no scaling; M <= 16 is padded to 32 because _int_mm needs M > 16);
- w4a8:   `kernels.w4a8_gemm` from bf16 x, per-token activation quantization included, at the
  config the autotuner picks (shipped, cached or timed);
- fused / unpacked (M >= 256): the same call at the best config of each prefill path, timed here:
  the fused tile (int4 unpacked in registers) and unpack + int8 GEMM (w4a8_unpacked.py);
- roof:   max(bytes / HBM bandwidth, int8 ops / int8 peak), datasheet peaks of the named GPU;
and the W4A8 speedup over bf16, over int_mm, and its share of the roofline. Medians of
`triton.testing.do_bench` over CUDA-graph replays (no Python launch overhead); weights are
rotated over copies larger than L2 so that small layers are not timed from cache.
"""

import argparse
import json

import torch
import triton
from triton.runtime.errors import OutOfResources

from .autotune import graph_ms
from .packing import pack_w4a8
from .reference import quantize_weight
from .w4a8_gemm import candidate_configs, sm_count, w4a8_gemm
from .w4a8_unpacked import UNPACK_MIN_M, is_unpacked

LAYERS = [  # name, N, K (../shared/REFERENCE.md, "Kernels and limits")
    ("8B qkv", 6144, 4096), ("8B gate_up", 24576, 4096), ("8B down", 4096, 12288),
    ("32B gate_up", 51200, 5120), ("32B down", 5120, 25600), ("30B-A3B qkv", 5120, 2048),
]
PEAKS = {  # HBM bytes/s, dense int8 ops/s (datasheets)
    "H200": (4.8e12, 1979e12), "H100": (3.35e12, 1979e12),
}
ROTATE_BYTES = 256 * 2**20  # > 4x the 50-60 MB L2 of H100/H200


def peaks_for(name: str) -> tuple[float, float]:
    for key, value in PEAKS.items():
        if key in name:
            return value
    return PEAKS["H100"]


def roofline_us(m: int, n: int, k: int, group_size: int, bw: float, int8_peak: float) -> float:
    n_groups = 1 if group_size == -1 else k // group_size
    nbytes = n * k / 2 + n_groups * n * 4 + m * k * 2 + m * n * 2
    return max(nbytes / bw, 2.0 * m * n * k / int8_peak) * 1e6


def rotating(make, nbytes_each: int) -> list:
    """make() called for enough copies of nbytes_each to span ROTATE_BYTES: rotated over, they are read from HBM."""
    copies = max(1, -(-ROTATE_BYTES // max(nbytes_each, 1)))
    return [make() for _ in range(copies)]


def _time_us(fns, min_calls: int = 20) -> float:
    """Median microseconds per call over CUDA-graph replays (`autotune.graph_ms`): graph replay
    takes Python and launch overhead out for every method alike (a decode step is captured the
    same way in practice); rotating over `fns` keeps weights out of L2."""
    return graph_ms(fns, max(min_calls, len(fns)), warmup_ms=25, rep_ms=100) * 1e3


def bench_layer(name: str, n: int, k: int, ms: list[int], group_size: int, bw: float, peak: float) -> list[dict]:
    dev = "cuda"
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
    q, s = quantize_weight(w, group_size)
    packed, scales = pack_w4a8(q, group_size), s.t().contiguous()
    w4 = rotating(lambda: (packed.clone(), scales.clone()), packed.numel())
    wb = rotating(lambda: w.clone(), w.numel() * 2)
    w8 = rotating(lambda: q.clone().t(), q.numel())  # [K, N] view of [N, K]: column-major
    rows = []
    for m in ms:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        x_pad = torch.randint(-127, 128, (max(m, 32), k), device=dev, dtype=torch.int8)
        t_bf16 = _time_us([lambda wi=wi: x @ wi.t() for wi in wb])
        t_int = _time_us([lambda wi=wi: torch._int_mm(x_pad, wi) for wi in w8])
        t_w4 = _time_us([lambda p=p, sc=sc: w4a8_gemm(x, p, sc, group_size) for p, sc in w4])
        paths = {}
        if m >= UNPACK_MIN_M:
            for config in candidate_configs(m, n, k, group_size, sm_count(x.device)):
                path = "unpacked" if is_unpacked(config) else "fused"
                try:
                    t = _time_us([lambda p=p, sc=sc, c=config: w4a8_gemm(x, p, sc, group_size, config=c)
                                  for p, sc in w4])
                except OutOfResources:  # skipped as the autotuner skips it
                    continue
                paths[path] = min(paths.get(path, float("inf")), t)
        roof = roofline_us(m, n, k, group_size, bw, peak)
        rows.append(dict(layer=name, N=n, K=k, M=m, bf16_us=t_bf16, int_mm_us=t_int, w4a8_us=t_w4,
                         fused_us=paths.get("fused"), unpacked_us=paths.get("unpacked"),
                         roof_us=roof, speedup_bf16=t_bf16 / t_w4, speedup_int_mm=t_int / t_w4,
                         pct_roof=100 * roof / t_w4, weight_bw_pct=100 * (n * k / 2 / (t_w4 * 1e-6)) / bw))
        by_path = "".join(f"  {path} {t:8.1f}" for path, t in paths.items())
        print(f"{name:12s} M={m:5d}  bf16 {t_bf16:9.1f}  int_mm {t_int:9.1f}  w4a8 {t_w4:9.1f}{by_path}  "
              f"roof {roof:8.1f}  x{t_bf16 / t_w4:5.2f} vs bf16", flush=True)
    del wb, w4, w8
    torch.cuda.empty_cache()
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| layer | N | K | M | bf16 us | int_mm us | W4A8 us | fused us | unpacked us | roofline us | vs bf16 "
            "| vs int_mm | % roofline | weight GB/s % |\n" + "|---" * 14 + "|\n")
    opt = (lambda t: f"{t:.1f}" if t is not None else "-")
    body = "".join(
        f"| {r['layer']} | {r['N']} | {r['K']} | {r['M']} | {r['bf16_us']:.1f} | {r['int_mm_us']:.1f} "
        f"| {r['w4a8_us']:.1f} | {opt(r['fused_us'])} | {opt(r['unpacked_us'])} | {r['roof_us']:.1f} "
        f"| {r['speedup_bf16']:.2f}x | {r['speedup_int_mm']:.2f}x | {r['pct_roof']:.0f}% | {r['weight_bw_pct']:.0f}% |\n" for r in rows)
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=128, help="-1 (per channel), 32, 64 or 128")
    parser.add_argument("--m", default="1,4,16,64,256,1024,4096", help="comma-separated M values")
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels.benchmark needs a CUDA GPU (timings on the CPU interpreter mean nothing)")
    name = torch.cuda.get_device_name()
    bw, peak = peaks_for(name)
    print(f"device: {name} | torch {torch.__version__} | triton {triton.__version__} | "
          f"group_size {args.group_size} | peaks {bw / 1e12:.2f} TB/s, {peak / 1e12:.0f} int8 TOP/s")
    ms = [int(v) for v in args.m.split(",")]
    wanted = {v.strip() for v in args.layers.split(",") if v.strip()}
    rows = []
    for layer, n, k in LAYERS:
        if not wanted or layer in wanted:
            rows += bench_layer(layer, n, k, ms, args.group_size, bw, peak)
    print(f"\ndevice: {name}, torch {torch.__version__}, triton {triton.__version__}, "
          f"group_size {args.group_size}\n")
    print(markdown_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, triton=triton.__version__,
                           group_size=args.group_size, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
