"""Run a candidate W4A8 GEMM on the reference's inputs inside the candidate's process, watching
what it does: matmul-like torch ops are recorded (a kernel task forbids handing the GEMM to
cuBLAS), and so are Triton kernel launches (the port must run a kernel of its own). Executed as
text by the harness, followed by `main(ARGS)`; writes `<out>/result.json` and `<out>/tensors.pt`.

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
from torch.utils._python_dispatch import TorchDispatchMode

MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "_int_mm", "linear", "dot", "mv", "addmv",
              "_scaled_mm", "einsum", "tensordot", "convolution")
LAUNCHES = {"count": 0}


class MatmulSpy(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in MATMUL_OPS:
            self.seen.add(f"aten.{name}")
        return func(*args, **(kwargs or {}))


def _count_launches() -> None:
    """Count Triton launches: compiled (JITFunction.run) and interpreted (InterpretedFunction.run)."""
    import triton.runtime.jit as jit

    targets = [jit.JITFunction]
    try:
        import triton.runtime.interpreter as interpreter

        targets.append(interpreter.InterpretedFunction)
    except ImportError:
        pass
    for cls in targets:
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            LAUNCHES["count"] += 1
            return _original(self, *args, **kwargs)

        cls.run = run


def _call(fn, case: dict, device: str) -> torch.Tensor:
    return fn(case["x"].to(device), case["weight_packed"].to(device), case["weight_scale"].to(device),
              case["group_size"])


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
    _count_launches()
    fn = getattr(importlib.import_module(args["module"]), args["function"])
    device = args.get("device", "cpu")
    cases = torch.load(args["inputs"], weights_only=True)
    result, tensors = {"errors": {}}, {}
    if "numerics" in args["ops"]:
        outputs, spy = [], MatmulSpy()
        try:
            with spy:
                for case in cases:
                    outputs.append(_call(fn, case, device).float().cpu())
        except Exception as err:
            result["errors"]["numerics"] = "".join(traceback.format_exception(err)[-3:])[-2000:]
        tensors["outputs"] = outputs
        result.update(matmul_ops=sorted(spy.seen), triton_launches=LAUNCHES["count"])
    if "perf" in args["ops"]:
        timings = [perf_case(fn, case, device) for case in cases]
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        result.update(timings=timings, device_name=name)
    torch.save(tensors, out / "tensors.pt")
    (out / "result.json").write_text(json.dumps(result, indent=1))
