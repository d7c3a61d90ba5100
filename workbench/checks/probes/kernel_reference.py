"""Inputs and exact outputs for a kernel task, made in the reference's process (it may import
`kernels`). Executed as text by the harness, followed by `main(ARGS)`; writes
`<out>/inputs.pt` (what the candidate gets) and `<out>/expected.pt` (what it is compared with).

Each case (M, N, K, group): x bf16 [M, K] with a few outlier channels (the reason for per-token
scales), int4 weights packed in the compressed-tensors layout (`weight_packed` int32 [N, K/8],
`weight_scale` bf16 [N, K/G]) and the exact W4A8 result (fp64 accumulation).
"""

import importlib
from pathlib import Path

import torch


def main(args: dict) -> None:
    packing = importlib.import_module(args["packing"])
    reference = importlib.import_module(args["reference"])
    generator = torch.Generator().manual_seed(args["seed"])
    inputs, expected = [], []
    for m, n, k, group in args["cases"]:
        x = torch.randn(m, k, generator=generator)
        x[:, torch.randperm(k, generator=generator)[:4]] *= 20.0
        w = torch.randn(n, k, generator=generator) / k**0.5
        q, scales = reference.quantize_weight(w, group)
        scales = scales.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
        inputs.append({"x": x, "weight_packed": packing.pack_ct(q), "weight_scale": scales, "group_size": group})
        expected.append(reference.w4a8_linear_ref(x.float(), q, scales.float()).to(torch.float64))
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.save(inputs, out / "inputs.pt")
    torch.save(expected, out / "expected.pt")
    (out / "result.json").write_text(f"{{\"cases\": {len(inputs)}}}")
    torch.save({}, out / "tensors.pt")
