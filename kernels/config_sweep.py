"""Config sweep for the W4A8 GEMM: every candidate launch config, then warp/stage variants of
the three fastest, timed on the GPU and checked against the reference.

    python -m kernels.config_sweep [decode|prefill|all|moe|moe-sum|moe-glu|gemv-rows|small-tiles]

Prints, per shape, the bf16 time and the six fastest configs. This is the evidence behind the
candidate lists in `w4a8_gemm.candidate_configs` and the "what holds the rest back" section of
the README. Times include per-token activation quantization, as `w4a8_gemm` does.

`moe` times the expert GEMV's configs (`w4a8_moe.moe_gemv_candidates`) and the routed-tile GEMM
on Qwen3-30B-A3B's expert layers at 8 and 128 slots (batch 1 and 16): the evidence behind
`moe_gemv_config` and `GEMV_MAX_SLOTS`; after the down GEMV's configs it times the down GEMV that
sums the slots (`w4a8_moe_gemv_sum`) against the GEMV and `sum_slots` it replaces (`moe-sum`: that
part alone). `moe-glu` times the expert MLP with SiLU-mul in the gate/up GEMV's epilogue against
the three launches it replaces (`sweep_moe_glu`). Expert ids are drawn afresh for each of 16 calls
in the graph, so the weights come from HBM as at decode. `gemv-rows` times the dp4a GEMV against the
tensor-core tile at 8 and 16 rows, above GEMV_MAX_M (`sweep_gemv_rows`); `small-tiles` the decode
tiles of 16-32 weight rows on 1-2 warps (mma.sync) against the shipped candidates at 8 and 16
rows (`sweep_small_tiles`).
"""

import itertools
import sys

import torch
from triton.runtime.errors import OutOfResources

from .act_quant import per_token_quant_int8
from .autotune import graph_ms
from .benchmark import rotating
from .packing import pack_w4a8, padded_k
from .reference import quantize_weight, w4a8_linear_ref
from .w4a8_gemm import _launch, candidate_configs, sm_count
from .w4a8_gemv import gemv_configs, is_gemv
from .fused_act import silu_mul_quant
from .w4a8_moe import (GEMV_SUM_MIN_TOKENS, moe_gemv_candidates, moe_gemv_sum_candidates, route_by_expert, sum_slots,
                       w4a8_moe_gemm, w4a8_moe_gemv, w4a8_moe_gemv_glu, w4a8_moe_gemv_sum)

SHAPES = [  # M, N, K, group_size: Qwen3-8B / 30B-A3B layers
    (1, 24576, 4096, 128), (4, 24576, 4096, 128), (1, 4096, 12288, 128), (16, 24576, 4096, 128),
    (1, 6144, 4096, -1), (1, 5120, 2048, 128),
    (4096, 24576, 4096, 128), (1024, 6144, 4096, -1), (256, 24576, 4096, 128),
]


def graph_us(fn, calls: int = 10) -> float:
    """GPU microseconds per call of fn (or of a list of fns taken in turn) from graph replays."""
    return graph_ms(fn if isinstance(fn, list) else [fn], calls, warmup_ms=10, rep_ms=40) * 1e3


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


def expert_weights(experts: int, n: int, k: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, s = quantize_weight(torch.randn(experts * n, k, device="cuda") / k**0.5, group_size)
    return pack_w4a8(q, group_size).reshape(experts, n, -1), s.reshape(experts, n, -1).transpose(1, 2).contiguous()


def sweep_moe(slots: int, experts: int = 128, hidden: int = 2048, inter: int = 768, top_k: int = 8,
              group_size: int = 128, summed_only: bool = False) -> None:
    tokens = slots // top_k
    for what, n, k, row_div in (("gate_up", 2 * inter, hidden, top_k), ("down", hidden, inter, 1)):
        if summed_only and what != "down":
            continue
        packed, scales = expert_weights(experts, n, k, group_size)
        x_q, x_scale = per_token_quant_int8(torch.randn(tokens * top_k // row_div, k, device="cuda"))
        ids = [torch.stack([torch.randperm(experts, device="cuda")[:top_k] for _ in range(tokens)]).int()
               for _ in range(16)]
        weights = torch.rand(tokens, top_k, device="cuda").to(torch.bfloat16) if what == "down" else None
        ref = w4a8_moe_gemv(x_q, x_scale, packed, scales, ids[0], group_size, row_div, torch.bfloat16, weights)
        bytes_per_call = slots * n * k // 2
        if summed_only:
            sweep_moe_sum(x_q, x_scale, packed, scales, ids, weights, group_size, bytes_per_call)
            continue
        results = []
        for cfg in moe_gemv_candidates(slots):
            fns = [lambda i=i: w4a8_moe_gemv(x_q, x_scale, packed, scales, ids[i], group_size, row_div,
                                             torch.bfloat16, weights, cfg) for i in range(16)]
            err = ((fns[0]().float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            assert err < 1e-2, (cfg, err)  # the same int32 group sums; fp32 order differs with BLOCK_W
            results.append((graph_us(fns, calls=16), cfg))
        routed = graph_us([lambda i=i: w4a8_moe_gemm(x_q, x_scale, packed, scales, route_by_expert(ids[i], experts),
                                                    group_size, row_div, torch.bfloat16, weights)
                           for i in range(16)], calls=16)
        default = results[0][0]
        results.sort(key=lambda r: r[0])
        print(f"experts {what} N={n} K={k} slots={slots}: default GEMV {default:.1f} us, routed tiles "
              f"(with routing) {routed:.1f} us", flush=True)
        for t, cfg in results[:6]:
            print(f"   {t:8.1f} us  {bytes_per_call / t / 1e6:5.2f} TB/s of slot weights  {cfg}", flush=True)
        if what == "down":
            sweep_moe_sum(x_q, x_scale, packed, scales, ids, weights, group_size, bytes_per_call)


def sweep_moe_sum(x_q, x_scale, packed, scales, ids, weights, group_size: int, bytes_per_call: int) -> None:
    """The down GEMV with the slots summed in registers (`w4a8_moe_gemv_sum`) against the two
    launches it replaces (the GEMV's default config, then `sum_slots`), residual added in both."""
    tokens, top_k = ids[0].shape
    residual = torch.randn(tokens, packed.shape[1], device="cuda").to(torch.bfloat16)
    two = [lambda i=i: sum_slots(w4a8_moe_gemv(x_q, x_scale, packed, scales, ids[i], group_size, 1, torch.bfloat16,
                                               weights), top_k, residual) for i in range(16)]
    ref = two[0]()
    t_two = graph_us(two, calls=16)
    results = []
    for cfg in moe_gemv_sum_candidates(tokens):
        fns = [lambda i=i: w4a8_moe_gemv_sum(x_q, x_scale, packed, scales, ids[i], group_size, weights, torch.bfloat16,
                                             residual, cfg) for i in range(16)]
        err = ((fns[0]().float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        assert err < 1e-2, (cfg, err)  # BLOCK_W changes the fp32 order of the group sums
        results.append((graph_us(fns, calls=16), cfg))
    default = results[0][0]
    results.sort(key=lambda r: r[0])
    print(f"experts down, slots summed: GEMV + sum_slots {t_two:.1f} us, summed GEMV default {default:.1f} us "
          f"(x{t_two / default:.2f})", flush=True)
    for t, cfg in results[:6]:
        print(f"   {t:8.1f} us  x{t_two / t:4.2f}  {bytes_per_call / t / 1e6:5.2f} TB/s of slot weights  {cfg}",
              flush=True)


def sweep_moe_glu(slots: int, experts: int = 128, hidden: int = 2048, inter: int = 768, top_k: int = 8,
                  group_size: int = 128) -> None:
    """The expert MLP at decode as `W4A8Experts.routed` runs it, SiLU-mul in the gate/up GEMV's
    epilogue and the down GEMV quantizing on load (`w4a8_moe_gemv_glu`), against gate/up GEMV,
    `silu_mul_quant` and the down GEMV on int8 (summed from GEMV_SUM_MIN_TOKENS); then each of
    the two new launches over its candidate configs, the other at its default."""
    tokens = slots // top_k
    w13, s13 = expert_weights(experts, 2 * inter, hidden, group_size)
    w2, s2 = expert_weights(experts, hidden, inter, group_size)
    x_q, x_scale = per_token_quant_int8(torch.randn(tokens, hidden, device="cuda"))
    ids = [torch.stack([torch.randperm(experts, device="cuda")[:top_k] for _ in range(tokens)]).int()
           for _ in range(16)]
    weights = torch.rand(tokens, top_k, device="cuda").to(torch.bfloat16)
    residual = torch.randn(tokens, hidden, device="cuda").to(torch.bfloat16)
    summed = tokens >= GEMV_SUM_MIN_TOKENS

    def down(act, i, cfg=None):
        if summed:
            return w4a8_moe_gemv_sum(*act, w2, s2, ids[i], group_size, weights, torch.bfloat16, residual, cfg)
        return sum_slots(w4a8_moe_gemv(*act, w2, s2, ids[i], group_size, 1, torch.bfloat16, weights, cfg), top_k,
                         residual)

    def unfused(i):
        h = w4a8_moe_gemv(x_q, x_scale, w13, s13, ids[i], group_size, top_k, torch.bfloat16)
        return down(silu_mul_quant(h), i)

    def fused(i, glu_cfg=None, down_cfg=None):
        return down(w4a8_moe_gemv_glu(x_q, x_scale, w13, s13, ids[i], group_size, top_k, torch.bfloat16, glu_cfg),
                    i, down_cfg)

    assert torch.equal(fused(0), unfused(0))  # the same int8 values into the same down GEMV
    t_old = graph_us([lambda i=i: unfused(i) for i in range(16)], calls=16)
    t_new = graph_us([lambda i=i: fused(i) for i in range(16)], calls=16)
    print(f"expert MLP, slots={slots}: gate_up GEMV + silu_mul_quant + down {t_old:.1f} us, SiLU-mul in the "
          f"gate_up epilogue + down quantizing on load {t_new:.1f} us (x{t_old / t_new:.2f})", flush=True)
    down_candidates = moe_gemv_sum_candidates(tokens) if summed else moe_gemv_candidates(slots)
    for what, candidates in (("glu", moe_gemv_candidates(slots)), ("down", down_candidates)):
        results = []
        for cfg in candidates:
            kw = {"glu_cfg": cfg} if what == "glu" else {"down_cfg": cfg}
            results.append((graph_us([lambda i=i: fused(i, **kw) for i in range(16)], calls=16), cfg))
        results.sort(key=lambda r: r[0])
        for t, cfg in results[:4]:
            print(f"   {what} {cfg}: {t:.1f} us", flush=True)


GEMV_ROWS_SHAPES = [("8B gate_up", 24576, 4096), ("8B down", 4096, 12288), ("8B qkv", 6144, 4096),
                    ("32B gate_up", 51200, 5120), ("30B-A3B qkv", 5120, 2048)]


def rotated_us(fns: list) -> float:
    """graph_us over copies of a layer's weights taken in turn, at least 20 calls."""
    return graph_us(fns, calls=len(fns) * max(1, 20 // len(fns)))


class RotatedProblem:
    """One layer's W4A8 GEMM at m rows with the packed weights rotated over copies past L2 (as at
    decode, where every step reads them from HBM), and its reference output."""

    def __init__(self, m: int, n: int, k: int, group_size: int):
        q, s = quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5, group_size)
        self.m, self.n, self.k, self.group_size = m, n, k, group_size
        self.scales = s.t().contiguous()
        self.copies = rotating(lambda: pack_w4a8(q, group_size), n * k // 2)
        self.x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        self.ref = w4a8_linear_ref(self.x, q, s).float()

    def time_us(self, cfg: dict) -> float:
        """Microseconds per call of `cfg` (activation quantization included), checked first."""
        fns = [lambda w=w: _launch(*per_token_quant_int8(self.x), w, self.scales, None, self.group_size,
                                   torch.bfloat16, cfg) for w in self.copies]
        assert ((fns[0]().float() - self.ref).abs().max() / self.ref.abs().max()).item() < 1e-2, cfg
        return rotated_us(fns)


def sweep_gemv_rows(m: int, name: str, n: int, k: int, group_size: int = 128) -> None:
    """The dp4a GEMV (its configs at ROWS = next power of 2 of m) against the tensor-core decode tile
    at a batch above GEMV_MAX_M, the best config of each, weights rotated over copies past L2: the
    evidence for GEMV_MAX_M."""
    problem = RotatedProblem(m, n, k, group_size)
    sms = sm_count(torch.device("cuda"))
    best = {}
    gemv = gemv_configs(m, n, padded_k(k, group_size), group_size, sms)
    for cfg in candidate_configs(m, n, k, group_size, sms) + gemv:
        t, kind = problem.time_us(cfg), "gemv" if is_gemv(cfg) else "tile"
        if kind not in best or t < best[kind][0]:
            best[kind] = (t, cfg)
    (t_tile, _), (t_gemv, cfg) = best["tile"], best["gemv"]
    print(f"{name} M={m}: tensor-core tile {t_tile:.1f} us, dp4a GEMV {t_gemv:.1f} us (x{t_tile / t_gemv:.2f}) {cfg}",
          flush=True)


def small_tiles(m: int, n: int, k_pad: int, sms: int) -> list[dict]:
    """Decode tiles of 16-32 weight rows on 1-2 warps: below wgmma's 64-row A side (and below 4 warps)
    Triton emits mma.sync (SASS IMMA), one warp's own tile and no warpgroup-wide wait per K step."""
    configs = []
    for bn, warps in ((16, 1), (32, 1), (32, 2), (64, 2)):
        for bk, stages in itertools.product((128, 256), (3, 5)):
            want = max(1, 2 * sms // -(-n // bn))
            split = min(16, -(-k_pad // bk), 1 << (want - 1).bit_length())
            for s in sorted({max(1, split // 2), split, min(16, 2 * split)}):
                configs.append(dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=s, GROUP_N=1, num_warps=warps,
                                    num_stages=stages))
    return configs


def sweep_small_tiles(m: int, name: str, n: int, k: int, group_size: int = 128) -> None:
    """`small_tiles` against the shipped decode candidates, weights rotated over copies past L2, the
    three fastest of each, beside cuBLAS bf16 on rotated bf16 weights."""
    problem = RotatedProblem(m, n, k, group_size)
    w_bf16 = rotating(lambda: torch.randn(n, k, device="cuda", dtype=torch.bfloat16), n * k * 2)
    t_bf16 = rotated_us([lambda w=w: problem.x @ w.t() for w in w_bf16])
    del w_bf16
    sms = sm_count(torch.device("cuda"))
    results = {"shipped candidates": [], "small tiles": []}
    for family, configs in (("shipped candidates", candidate_configs(m, n, k, group_size, sms)),
                            ("small tiles", small_tiles(m, n, padded_k(k, group_size), sms))):
        for cfg in configs:
            try:
                results[family].append((problem.time_us(cfg), cfg))
            except OutOfResources:  # skipped, as the autotuner skips it
                continue
    floor_us = n * k / 2 / 3.0e6  # weight bytes at 3 TB/s
    print(f"{name} M={m}: bf16 {t_bf16:.1f} us, int4 weights at 3 TB/s {floor_us:.1f} us", flush=True)
    for family, found in results.items():
        for t, cfg in sorted(found, key=lambda r: r[0])[:3]:
            print(f"   {family:18s} {t:7.1f} us  x{t_bf16 / t:4.2f} vs bf16  {cfg}", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("moe", "moe-sum"):
        for slots in (8, 128):
            sweep_moe(slots, summed_only=which == "moe-sum")
    if which == "gemv-rows":
        for shape in GEMV_ROWS_SHAPES:
            for m in (16, 8):
                sweep_gemv_rows(m, *shape)
    if which == "small-tiles":
        for shape in GEMV_ROWS_SHAPES:
            for m in (16, 8):
                sweep_small_tiles(m, *shape)
    if which == "moe-glu":
        for slots in (8, 128):
            sweep_moe_glu(slots)
    for shape in SHAPES:
        if which == "all" or which in ("decode", "prefill") and (which == "decode") == (shape[0] <= 16):
            sweep(*shape)
