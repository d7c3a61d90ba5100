"""Run a candidate W4A8 GEMM on the reference's inputs inside the candidate's process, watching
what it does (probes/spies.py, executed ahead of this file): matmul-like torch ops (a kernel task
forbids handing the GEMM to cuBLAS), torch ops on floating tensors of the weight's shape (weights
dequantized outside the kernel) and, per case, the Triton launches with the integer bytes they
were handed (the kernel must read the packed weight itself). Executed as text by the harness,
followed by `main(ARGS)`; writes `<out>/result.json` and `<out>/tensors.pt`.

Ops: `numerics` (outputs for every case) and `perf` (CUDA: the candidate's time per call against
bf16 `torch.matmul` on the same shapes). Both are timed the way a decode engine runs them, by
CUDA-graph replay, going round copies of the weights larger than L2 so that no layer is timed
from cache; timing eager calls measured Triton's Python launch path instead (the gold kernel:
0.18 ms per eager call at M=1, K=N=4096, 9 us replayed: 0.20x bf16). The eager time per call is
reported beside it; a candidate that cannot be captured is timed eagerly, and says so.
"""

import importlib
import json
import time
import traceback
from pathlib import Path

import torch


def case_record(case: dict, launches: LaunchSpy, spy: OpSpy) -> dict:
    """What one case's call did (the spy's calls since the previous case): its Triton launches
    and the integer bytes they were handed against the packed weight's; torch matmuls; torch ops
    on a floating tensor of the weight's shape [N, K] (weights dequantized outside the kernel).
    Repacking the weight in torch is allowed: the kernel's layout is the port's own."""
    packed = case["weight_packed"]
    n, k = packed.shape[0], case["x"].shape[1]
    dequantized = sorted({f"aten.{c['op']}" for c in spy.calls for t in c["inputs"] + c["outputs"]
                          if t["floating"] and len(t["shape"]) >= 2 and sorted(t["shape"][-2:]) == sorted([n, k])})
    matmuls = spy.matmul_ops
    spy.calls.clear()
    return {"launches": len(launches.launches), "integer_bytes": launches.integer_bytes(), "matmul_ops": matmuls,
            "packed_bytes": packed.numel() * packed.element_size(), "dequantized_ops": dequantized}


def without_triton(fn, case: dict) -> float | str:
    """The call on fresh activations with its Triton launches skipped, then run: the largest
    difference between the two outputs relative to the real one's largest entry (0: the launches
    computed nothing it returns), or the error the skipped call raised. Skipped first, so that
    nothing of the real call can be handed back."""
    x = case["x"].roll(1, dims=1)  # a result no earlier call computed
    args = (case["weight_packed"], case["weight_scale"], case["group_size"])
    try:
        with LaunchSpy(run_kernels=False):
            skipped = fn(x, *args).float()
    except Exception as err:
        return f"{type(err).__name__}: {err}"[:300]
    real = fn(x, *args).float()
    return float((skipped - real).abs().nan_to_num(float("inf")).max() / real.abs().max().clamp_min(1e-12))


ROTATE_BYTES = 256 * 2**20  # > 4x the 50-60 MB L2 of H100 / H200
GRAPH_CALLS = 20  # calls per captured graph: a replay is long enough to time with events


def rotating(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Copies of `tensors` (one call's weights) adding up to at least ROTATE_BYTES."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    return [[t.clone() for t in tensors] for _ in range(max(1, -(-ROTATE_BYTES // max(nbytes, 1))))]


def _elapsed_ms(run, repeats: int) -> float:
    """Milliseconds for `repeats` runs of `run`: CUDA events on a GPU, the wall clock elsewhere."""
    if not torch.cuda.is_available():
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - start) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end)


def _eager_ms(fns, repeats: int = 3) -> float:
    calls = max(GRAPH_CALLS, len(fns))
    return min(_elapsed_ms(lambda: [fns[i % len(fns)]() for i in range(calls)], 1) for _ in range(repeats)) / calls


def _graph_ms(fns, repeats: int = 10) -> float:
    calls = max(GRAPH_CALLS, len(fns))
    stream = torch.cuda.Stream()  # captured off the default stream, as torch.cuda.graph requires
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    graph.replay()
    torch.cuda.synchronize()
    return min(_elapsed_ms(graph.replay, 1) for _ in range(repeats)) / calls


def measure(fns) -> dict:
    """Per-call milliseconds of calls going round `fns`: `ms` by CUDA-graph replay (eager where
    the calls cannot be captured, with `captured` False and the reason), `eager_ms` beside it."""
    for fn in fns:
        fn()  # compile, autotune and allocate before anything is timed
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    eager = _eager_ms(fns)
    if not torch.cuda.is_available():
        return {"ms": eager, "eager_ms": eager, "captured": False, "why": "CUDA graphs need a CUDA device"}
    try:
        return {"ms": _graph_ms(fns), "eager_ms": eager, "captured": True}
    except Exception as err:  # a host sync, a fresh allocation or a CPU tensor inside the call
        torch.cuda.synchronize()
        return {"ms": eager, "eager_ms": eager, "captured": False,
                "why": f"{type(err).__name__}: {str(err)[:300]}"}


def perf_case(fn, case: dict, device: str) -> dict:
    """The candidate against bf16 `torch.matmul` on one case's shape, both measured alike."""
    x = case["x"].to(device)
    n, k = case["weight_packed"].shape[0], x.shape[1]
    weights = rotating([case["weight_packed"].to(device), case["weight_scale"].to(device)])
    dense = rotating([torch.randn(n, k, dtype=torch.bfloat16, device=device)])
    candidate = measure([lambda w=w: fn(x, w[0], w[1], case["group_size"]) for w in weights])
    bf16 = measure([lambda w=w: torch.matmul(x, w[0].t()) for w in dense])
    return {"shape": [x.shape[0], n, k, case["group_size"]], "candidate_ms": candidate["ms"],
            "bf16_ms": bf16["ms"], "candidate_eager_ms": candidate["eager_ms"], "bf16_eager_ms": bf16["eager_ms"],
            "captured": candidate["captured"], **({"why_eager": candidate["why"]} if "why" in candidate else {})}


def main(args: dict) -> None:
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    fn = getattr(importlib.import_module(args["module"]), args["function"])
    device = args.get("device", "cpu")
    cases = torch.load(args["inputs"], weights_only=True)
    result, tensors = {"errors": {}}, {}
    if "numerics" in args["ops"]:
        outputs, spy, per_case = [], OpSpy(), []
        try:
            for case in cases:
                case = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}
                with spy, LaunchSpy() as launches:
                    y = fn(case["x"], case["weight_packed"], case["weight_scale"], case["group_size"])
                outputs.append(y.float().cpu())
                per_case.append({**case_record(case, launches, spy), "without_triton": without_triton(fn, case)})
        except Exception as err:
            result["errors"]["numerics"] = "".join(traceback.format_exception(err)[-3:])[-2000:]
        tensors["outputs"] = outputs
        result.update(matmul_ops=sorted({op for c in per_case for op in c["matmul_ops"]}), cases=per_case,
                      triton_launches=sum(c["launches"] for c in per_case))
    if "perf" in args["ops"]:
        timings = [perf_case(fn, case, device) for case in cases]
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        result.update(timings=timings, device_name=name)
    torch.save(tensors, out / "tensors.pt")
    (out / "result.json").write_text(json.dumps(result, indent=1))
