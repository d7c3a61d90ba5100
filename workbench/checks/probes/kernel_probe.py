"""Run a candidate W4A8 GEMM on the reference's inputs inside the candidate's process, watching
what it does: matmul-like torch ops are recorded (a kernel task forbids handing the GEMM to
cuBLAS), and so are Triton kernel launches (the port must run a kernel of its own). Executed as
text by the harness, followed by `main(ARGS)`; writes `<out>/result.json` and `<out>/tensors.pt`.

Ops: `numerics` (outputs for every case) and `perf` (CUDA: the candidate's time per call against
bf16 `torch.matmul` on the same shapes, both timed with CUDA events after warm-up).
"""

import importlib
import json
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


def _cuda_ms(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


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
        timings = []
        for case in cases:
            x, w = case["x"].to(device), torch.randn(case["weight_packed"].shape[0], case["x"].shape[1],
                                                     dtype=torch.bfloat16, device=device)
            candidate_args = [case[k].to(device) for k in ("x", "weight_packed", "weight_scale")]
            timings.append({"shape": [x.shape[0], w.shape[0], x.shape[1], case["group_size"]],
                            "candidate_ms": _cuda_ms(lambda a=candidate_args, g=case["group_size"]: fn(*a, g)),
                            "bf16_ms": _cuda_ms(lambda x=x, w=w: torch.matmul(x, w.t()))})
        result.update(timings=timings, device_name=torch.cuda.get_device_name())
    torch.save(tensors, out / "tensors.pt")
    (out / "result.json").write_text(json.dumps(result, indent=1))
