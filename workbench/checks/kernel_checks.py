"""Checks of a kernel port: `kernel_numerics` (the candidate's W4A8 GEMM against the exact
contract result over a grid of shapes, run as its own Triton kernel: a GEMM handed to
`torch.matmul` / `torch._int_mm`, weights dequantized in torch, Triton launches that are not
handed the packed weight, or an output that comes out the same with every Triton launch skipped
fail as `forbidden_op`) and `kernel_perf` (CUDA only: its time
against bf16 `torch.matmul` on the same shapes, both by CUDA-graph replay over weights rotated
past L2, the eager time per call beside it).

Inputs and exact outputs come from the reference's process (`kernels.packing` and
`kernels.reference`), made with the checks' hidden seed; the candidate sees only the inputs.
"""

import math
from pathlib import Path

import torch

from ..tasks.fixtures import check_seed
from ..tasks.spec import CheckSpec, TaskSpec
from .probing import probe_candidate, probe_failure, probe_reference, require_reference
from .result import CheckResult

# (M, N, K, group): a decode row, an odd M per channel, M > one tile; small enough for the
# Triton interpreter on a CPU (each case a few seconds).
DEFAULT_CASES = [[1, 96, 128, 32], [7, 64, 256, -1], [33, 80, 192, 64]]
# Real decode shapes (Qwen3-8B q_proj, gate_up at batch 16, down_proj); cuda only.
DEFAULT_PERF_CASES = [[1, 4096, 4096, 128], [16, 24576, 4096, 128], [1, 4096, 12288, 128]]
# bf16 output rounding is 2^-8 relative; the contract's own per-token rounding is exact.
DEFAULT_RTOL = 1e-2
# The Triton launches of one call must be handed at least this share of the packed weight's bytes
# (a kernel of its own reads all of it; a token launch beside a torch GEMM reads none).
MIN_WEIGHT_READ = 0.9


def _inputs(spec: TaskSpec, cases: list, timeout_s: float) -> Path:
    args = {"packing": f"{spec.reference}.packing", "reference": f"{spec.reference}.reference",
            "seed": check_seed(), "cases": cases}
    ref = require_reference(probe_reference(spec.repo_root, "kernel_reference", args, timeout_s), "inputs",
                            timeout_s, spec.reference)
    return ref.folder  # set: a reference run that succeeded is kept in the cache


def _candidate_args(spec: TaskSpec, check: CheckSpec, folder: Path, ops: list[str]) -> dict:
    return {"module": spec.target, "function": check.params.get("function", "w4a8_gemm"), "device": spec.device,
            "inputs": str(folder / "inputs.pt"), "ops": ops}


def check_kernel_numerics(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    name, timeout = check.name or "kernel_numerics", check.params.get("timeout_s", 300)
    cases, rtol = check.params.get("cases", DEFAULT_CASES), check.params.get("rtol", DEFAULT_RTOL)
    folder = _inputs(spec, cases, timeout)
    cand = probe_candidate(tree, "kernel_probe", _candidate_args(spec, check, folder, ["numerics"]), timeout)
    if (problem := probe_failure(name, cand, "numerics", timeout, who=f"{spec.target}")) is not None:
        return problem
    if cand.result["matmul_ops"]:
        return CheckResult(name=name, status="fail", category="forbidden_op",
                           summary=f"the GEMM calls {', '.join(cand.result['matmul_ops'])}: a kernel task must run "
                                   "its own Triton kernel, not torch's matmul")
    fail = dict(name=name, status="fail", category="forbidden_op", details={"cases": cand.result["cases"]})
    for (m, n, k, group), done in zip(cases, cand.result["cases"], strict=True):
        case = f"M={m}, N={n}, K={k}, group_size={group}"
        if done["dequantized_ops"]:
            return CheckResult(**fail, summary=f"{case}: torch ops ({', '.join(done['dequantized_ops'])}) make a "
                                               f"floating tensor of the weight's shape [{n}, {k}]: the int4 weights "
                                               "must be unpacked inside the Triton kernel, not dequantized in torch")
        if done["integer_bytes"] < MIN_WEIGHT_READ * done["packed_bytes"]:
            return CheckResult(**fail, summary=f"{case}: the Triton launches ({done['launches']}) were handed "
                                               f"{done['integer_bytes']} bytes of integer tensors, the packed weight "
                                               f"is {done['packed_bytes']}: the GEMM's integer work must run in the "
                                               "Triton kernel")
        if isinstance(done["without_triton"], float) and done["without_triton"] <= rtol:
            return CheckResult(**fail, summary=f"{case}: the output is the same with every Triton launch skipped "
                                               f"(within {done['without_triton']:.2%}): the GEMM runs outside the "
                                               "Triton kernels")
    expected = torch.load(folder / "expected.pt", weights_only=True)
    errors = []
    for (m, n, k, group), got, want in zip(cases, cand.tensors["outputs"], expected, strict=True):
        case = f"M={m}, N={n}, K={k}, group_size={group}"
        if tuple(got.shape) != tuple(want.shape):
            return CheckResult(name=name, status="fail", category="shape_mismatch",
                               summary=f"{case}: output {list(got.shape)}, expected {list(want.shape)} [M, N]")
        error = float((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12))
        errors.append(round(error, 6))
        if not math.isfinite(error) or error > rtol:
            return CheckResult(name=name, status="fail", category="diverges_from_reference",
                               details={"max_rel_errors": errors},
                               summary=f"{case}: max error {error:.2%} of max |y| (tolerance {rtol:.0%}); check the "
                                       "nibble order, the +8 offset, group scales and per-token rounding")
    return CheckResult(name=name, status="pass", details={"max_rel_errors": errors},
                       summary=f"{len(cases)} shapes within {max(errors):.2%} of the exact W4A8 result, "
                               f"{cand.result['triton_launches']} Triton launches handed the packed weights, no "
                               "torch matmul")


def check_kernel_perf(spec: TaskSpec, check: CheckSpec, tree: Path) -> CheckResult:
    name, timeout = check.name or "kernel_perf", check.params.get("timeout_s", 300)
    if spec.device != "cuda":
        return CheckResult(name=name, status="skip", summary="needs a CUDA device: run `workbench check --device "
                                                             "cuda` on a GPU host")
    cases, floor = check.params.get("cases", DEFAULT_PERF_CASES), check.params.get("min_speedup", 1.0)
    folder = _inputs(spec, cases, timeout)
    cand = probe_candidate(tree, "kernel_probe", _candidate_args(spec, check, folder, ["perf"]), timeout)
    if (problem := probe_failure(name, cand, "perf", timeout, who=f"{spec.target}")) is not None:
        return problem
    timings = cand.result["timings"]
    speedups = [t["bf16_ms"] / t["candidate_ms"] for t in timings]
    geomean = math.exp(sum(map(math.log, speedups)) / len(speedups))
    eager = [t for t in timings if not t["captured"]]
    details = {"device": cand.result["device_name"], "timings": timings}
    status = "pass" if geomean >= floor else "fail"
    how = ("CUDA-graph replay" if not eager else
           f"eager calls for {len(eager)} shape(s): the candidate could not be captured in a CUDA graph "
           f"({eager[0].get('why_eager', 'no reason given')})")
    return CheckResult(name=name, status=status, category="none" if status == "pass" else "too_slow",
                       details=details, summary=f"{geomean:.2f}x bf16 torch.matmul (geomean over {len(cases)} "
                                                f"shapes, floor {floor:.2f}x) on {details['device']}, timed by {how}; "
                                                "weights rotated past L2")
