"""Build every Triton kernel of this package for sm_90a on real model shapes, without a GPU.

    python -m kernels.compile_check [--models qwen3-8b,qwen3-32b,qwen3-30b-a3b] [--m 1,4,16,1024]
                                    [--group-sizes 128,-1] [--candidates] [--json FILE]

Runs the package's own entry points (w4a8_gemm with each launch config, the decode plan, the
GEMV, split-K reduction, activation quantization, the fused norm/activation kernels, q/k norm +
rope, decode attention, the MoE expert kernels, w8a8_gemm) under `compile_only` (compile_only.py):
each distinct kernel specialization is compiled once to a cubin and inspected, nothing runs. The
configs are those the code launches untuned (the first candidate, fixed configs) and, with
`--candidates`, every config the autotuner may time on the GPU: a candidate that does not build
would stop tuning with an error, one that needs more shared memory than the SM has is skipped.

Prints one row per build: registers, spilled bytes, shared memory and the SASS that shows which
path the kernel took (IGMMA: wgmma on int8, IMMA: mma.sync on int8, IDP.4A: dp4a); exits 1 if a
launch failed to build.
"""

import argparse
import json
import sys
import traceback

import torch
from triton.runtime.errors import OutOfResources

from .act_quant import per_token_quant_int8
from .compile_only import KernelBuild, compile_only
from .decode_attention import decode_attention
from .fused_act import add_rmsnorm_quant, rmsnorm, rmsnorm_quant, silu_mul_quant
from .moe_routing import route, topk_softmax
from .packing import padded_k
from .qk_rope import qk_norm_rope_store
from .w4a8_gemm import DECODE_MAX_M, candidate_configs, decode_plan, w4a8_gemm
from .w4a8_moe import (GEMV_MAX_SLOTS, route_by_expert, sum_slots, w4a8_moe_gemm, w4a8_moe_gemv,
                       w4a8_moe_gemv_glu, w4a8_moe_gemv_sum)
from .w4a8_unpacked import is_unpacked
from .w8a8_gemm import candidate_configs as w8a8_candidate_configs, w8a8_gemm

# Qwen3 shapes (../shared/REFERENCE.md): hidden, q heads, kv heads, head dim, MLP width; MoE:
# experts, experts per token (the MLP width is then each expert's).
MODELS = {
    "qwen3-8b": dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=12288),
    "qwen3-32b": dict(hidden=5120, heads=64, kv_heads=8, head_dim=128, inter=25600),
    "qwen3-30b-a3b": dict(hidden=2048, heads=32, kv_heads=4, head_dim=128, inter=768, experts=128, top_k=8),
}
CACHE_LEN = 768  # static cache of a 500-token decode (adapters/static_decode.py rounds to 256)


class Sweep:
    """Launches kernels under a CompileOnlyDriver, recording where each build came from and what failed."""

    def __init__(self, fake, candidates: bool):
        self.fake, self.candidates = fake, candidates
        self.failures: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []  # over the SM's limits: skipped as the autotuner does

    def run(self, where: str, launch) -> None:
        self.fake.where = where
        try:
            launch()
        except OutOfResources as err:
            self.refused.append((where, str(err)))
        except Exception as err:  # a build that fails: report it with its launch, go on
            self.failures.append((where, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=-3)}"))


def _weights(n: int, k: int, group_size: int, experts: int = 0):
    lead = (experts,) if experts else ()
    groups = 1 if group_size == -1 else k // group_size
    packed = torch.empty(*lead, n, padded_k(k, group_size) // 2, dtype=torch.int8)
    scales = torch.empty(*lead, groups, n, dtype=torch.float32)
    return packed, scales


def sweep_dense(s: Sweep, name: str, n: int, k: int, m: int, group_size: int) -> None:
    packed, scales = _weights(n, k, group_size)
    x = torch.empty(m, k, dtype=torch.bfloat16)
    x_q, x_scale = torch.empty(m, k, dtype=torch.int8), torch.empty(m, 1, dtype=torch.float32)
    configs = candidate_configs(m, n, k, group_size, s.fake.properties["multiprocessor_count"])  # split-K defaults
    # untuned: the first config, and the first of the unpack + int8 GEMM path the tuner may pick
    first = [0] + [i for i, c in enumerate(configs) if is_unpacked(c)][:1]
    for i, config in enumerate(configs):
        if s.candidates or i in first:
            s.run(f"{name} M={m} g={group_size} config {i}",
                  lambda: w4a8_gemm(x_q, packed, scales, group_size, x_scale=x_scale, config=config))
    if m <= DECODE_MAX_M:
        plans = []
        s.run(f"{name} M={m} g={group_size} decode plan",
              lambda: plans.append(decode_plan(x, packed, scales, group_size, None)) or plans[0](x, packed, scales, None))
        if plans and plans[0].gemv:  # float rows quantized as they load (o_proj after decode attention)
            absmax = torch.empty(m, k // 128, dtype=torch.float32)  # one partial per head
            s.run(f"{name} M={m} g={group_size} decode plan, bf16 in",
                  lambda: plans[0].quantized(x, absmax, packed, scales, None))


def sweep_rows(s: Sweep, shape: dict, m: int) -> None:
    hidden, d, inter = shape["hidden"], shape["head_dim"], shape["inter"]
    x = torch.empty(m, hidden, dtype=torch.bfloat16)
    weight = torch.empty(hidden, dtype=torch.bfloat16)
    s.run(f"rmsnorm_quant M={m} K={hidden}", lambda: rmsnorm_quant(x, weight, 1e-6))
    s.run(f"add_rmsnorm_quant M={m} K={hidden} split-K partials",  # o_proj's, the post-attention norm
          lambda: add_rmsnorm_quant(torch.empty(8, m, hidden), x, weight, 1e-6))
    s.run(f"q/k rmsnorm rows={m * shape['heads']} D={d}",
          lambda: rmsnorm(torch.empty(m * shape["heads"], d, dtype=torch.bfloat16), weight[:d], 1e-6))
    s.run(f"silu_mul_quant M={m} I={inter}", lambda: silu_mul_quant(torch.empty(m, 2 * inter, dtype=torch.bfloat16)))
    o_in = shape["heads"] * d
    s.run(f"per_token_quant_int8 M={m} K={o_in}",
          lambda: per_token_quant_int8(torch.empty(m, o_in, dtype=torch.bfloat16)))


def sweep_attention(s: Sweep, shape: dict, b: int) -> None:
    hq, hkv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    keys = torch.empty(b, hkv, CACHE_LEN, d, dtype=torch.bfloat16)
    values = torch.empty_like(keys)
    slot = torch.zeros((), dtype=torch.long)
    qkv = torch.empty(b, (hq + 2 * hkv) * d, dtype=torch.bfloat16)
    norm = torch.empty(d, dtype=torch.bfloat16)
    cos = torch.empty(b, d, dtype=torch.bfloat16)
    s.run(f"qk_norm_rope_store B={b}",
          lambda: qk_norm_rope_store(qkv, norm, norm, 1e-6, cos, cos, keys, values, slot, hq, hkv))
    parts = torch.empty(4, *qkv.shape, dtype=torch.float32)  # the qkv GEMV's split-K partials, summed on load
    s.run(f"qk_norm_rope_store B={b} split-K partials",
          lambda: qk_norm_rope_store(parts, norm, norm, 1e-6, cos, cos, keys, values, slot, hq, hkv))
    query = torch.empty(b, hq, 1, d, dtype=torch.bfloat16)
    mask = torch.zeros(b, 1, 1, CACHE_LEN, dtype=torch.bfloat16)
    for absmax in (False, True):  # with the per-head absmax o_proj's GEMV reads (the decode step)
        s.run(f"decode_attention B={b} L={CACHE_LEN} absmax={absmax}",
              lambda: decode_attention(query, keys, values, mask, slot, d ** -0.5, absmax))


def sweep_experts(s: Sweep, shape: dict, m: int, group_size: int) -> None:
    hidden, inter, experts, top_k = shape["hidden"], shape["inter"], shape["experts"], shape["top_k"]
    top = torch.randint(0, experts, (m, top_k))  # real expert ids: routing is torch and reads them
    x = torch.empty(m, hidden, dtype=torch.bfloat16)
    for router_dtype, bias in ((torch.bfloat16, None), (torch.float32, torch.empty(experts))):  # Qwen3-MoE, Ernie
        router = torch.empty(experts, hidden, dtype=router_dtype)
        s.run(f"route T={m} E={experts} {router_dtype}", lambda: route(x, router, top_k, True, torch.bfloat16, bias))
    s.run(f"topk_softmax T={m} E={experts}",  # prefill: logits from F.linear
          lambda: topk_softmax(torch.empty(m, experts, dtype=torch.bfloat16), top_k, True, torch.bfloat16))
    slot_weights = torch.empty(m, top_k, dtype=torch.bfloat16)
    s.run(f"sum_slots T={m} k={top_k}", lambda: sum_slots(torch.empty(m * top_k, hidden, dtype=torch.bfloat16), top_k))
    for what, n, k, rows, row_div in (("gate_up", 2 * inter, hidden, m, top_k), ("down", hidden, inter, m * top_k, 1)):
        packed, scales = _weights(n, k, group_size, experts)
        x_q, x_scale = torch.empty(rows, k, dtype=torch.int8), torch.empty(rows, 1, dtype=torch.float32)
        weights = slot_weights if what == "down" else None  # as W4A8Experts.routed launches them
        where = f"experts {what} M={m} g={group_size}"
        s.run(where, lambda: w4a8_moe_gemm(x_q, x_scale, packed, scales, route_by_expert(top, experts),
                                           group_size, row_div, torch.bfloat16, weights))
        if m * top_k <= GEMV_MAX_SLOTS:
            s.run(where + " gemv", lambda: w4a8_moe_gemv(x_q, x_scale, packed, scales, top, group_size, row_div,
                                                         torch.bfloat16, weights))
            if what == "gate_up":  # SiLU-mul in the epilogue, as decode runs it
                s.run(where + " gemv glu", lambda: w4a8_moe_gemv_glu(x_q, x_scale, packed, scales, top, group_size,
                                                                     row_div, torch.bfloat16))
            else:  # the down GEMV on the glu GEMV's bf16 rows (quantized as loaded), slots summed or not
                act = torch.empty(rows, k, dtype=torch.bfloat16), torch.empty(rows, k // 8, dtype=torch.float32)
                s.run(where + " gemv bf16 in", lambda: w4a8_moe_gemv(*act, packed, scales, top, group_size, row_div,
                                                                     torch.bfloat16, weights))
                s.run(where + " gemv sum", lambda: w4a8_moe_gemv_sum(x_q, x_scale, packed, scales, top, group_size,
                                                                     weights, torch.bfloat16, x))
                s.run(where + " gemv sum bf16 in", lambda: w4a8_moe_gemv_sum(*act, packed, scales, top, group_size,
                                                                             weights, torch.bfloat16, x))


def sweep_w8a8(s: Sweep, m: int) -> None:
    n, k = 4096, 4096
    x_q, x_scale = torch.empty(m, k, dtype=torch.int8), torch.empty(m, 1, dtype=torch.float32)
    w_q, w_scale = torch.empty(n, k, dtype=torch.int8), torch.empty(n, dtype=torch.float32)
    configs = w8a8_candidate_configs(m)
    for i, config in enumerate(configs if s.candidates else configs[:1]):
        s.run(f"w8a8 M={m} config {i}", lambda: w8a8_gemm(x_q, x_scale, w_q, w_scale, config=config))


def sweep(models: list[str], ms: list[int], group_sizes: list[int], candidates: bool, arch: int = 90):
    """Build everything for these models, M values and group sizes; returns (builds, failures, refused)."""
    with compile_only(arch) as fake:
        s = Sweep(fake, candidates)
        for model in models:
            shape = MODELS[model]
            hidden, q_width, kv_width = shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
            dense = [("qkv", q_width + 2 * kv_width, hidden), ("o_proj", hidden, q_width)]
            if "experts" not in shape:
                dense += [("gate_up", 2 * shape["inter"], hidden), ("down", hidden, shape["inter"])]
            for m in ms:
                for group_size in group_sizes:
                    for layer, n, k in dense:
                        sweep_dense(s, f"{model} {layer}", n, k, m, group_size)
                    if "experts" in shape:
                        sweep_experts(s, shape, m, group_size)
                sweep_rows(s, shape, m)
                if m <= DECODE_MAX_M:  # decode steps: one token per row, the static cache
                    sweep_attention(s, shape, m)
        for m in ms:
            sweep_w8a8(s, m)
    return fake.builds, s.failures, s.refused


def markdown_table(builds: list[KernelBuild]) -> str:
    """One row per build, in build order (each kernel specialization under its first launch)."""
    head = ("| kernel | first built by | constexprs | warps | stages | regs | spill B | smem B | SASS | loop | marks |\n"
            + "|---" * 11 + "|\n")
    rows = []
    for b in builds:
        meta = " ".join(f"{k}={v}" for k, v in b.meta.items() if k not in ("num_warps", "num_stages"))
        rows.append(f"| {b.kernel} | {b.where} | {meta} | {b.meta['num_warps']} | {b.meta['num_stages']} "
                    f"| {b.registers} | {b.local} | {b.shared} | {b.instructions} | {b.loop_instructions} | {b.marks()} |\n")
    return head + "".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--m", default="1,4,16,1024", help="token counts (decode batch sizes, prefill length)")
    parser.add_argument("--group-sizes", default="128", help="weight group sizes, -1 per channel")
    parser.add_argument("--candidates", action="store_true", help="every autotuner candidate, not only the default")
    parser.add_argument("--json", help="also write the builds, failures and refusals here")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; known: {list(MODELS)}")
    builds, failures, refused = sweep(models, [int(m) for m in args.m.split(",")],
                                      [int(g) for g in args.group_sizes.split(",")], args.candidates)
    print(f"{len(builds)} kernels built for sm_90a\n\n{markdown_table(builds)}")
    for where, why in refused:
        print(f"over the SM's limits (the autotuner skips it): {where}: {why}")
    for where, why in failures:
        print(f"failed to build: {where}: {why}")
    print(f"{len(builds)} built, {len(refused)} over the limits, {len(failures)} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"builds": [dict(b.__dict__, opcodes=dict(b.opcodes)) for b in builds],
                       "failures": failures, "refused": refused}, f, indent=1, default=str)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
