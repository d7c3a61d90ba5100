"""What a probed process does, watched from inside it: the torch ops it dispatches and the Triton
kernels it launches. Executed as text ahead of a probe (kernel_probe.py, model_probe.py), like
them it imports only the standard library, torch and (lazily) triton.

`OpSpy` records every aten op under a TorchDispatchMode with the shapes and dtypes of its tensor
inputs and outputs; `LaunchSpy` records (and on request skips) every Triton launch (compiled: JITFunction.run;
interpreted: InterpretedFunction.run) with its tensor arguments' shape, dtype and address range.
Both record only inside their `with` block.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# aten ops that are a matrix product, whatever the dtype
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "_int_mm", "linear", "dot", "mv", "addmv",
              "_scaled_mm", "einsum", "tensordot", "convolution", "_weight_int8pack_mm", "_weight_int4pack_mm")


def tensor_facts(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "floating": t.dtype.is_floating_point}


class OpSpy(TorchDispatchMode):
    """Each aten op called in the block: {"op", "inputs": [facts], "outputs": [facts]}."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls.append({"op": func.overloadpacket.__name__,
                           "inputs": [tensor_facts(t) for t in tree_leaves((args, kwargs or {}))
                                      if isinstance(t, torch.Tensor)],
                           "outputs": [tensor_facts(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]})
        return out

    @property
    def matmul_ops(self) -> list[str]:
        return sorted({f"aten.{c['op']}" for c in self.calls if c["op"] in MATMUL_OPS})


class LaunchSpy:
    """Each Triton launch in the block: {"kernel", "tensors": [facts + "start", "nbytes"], "skipped"}. With
    `run_kernels=False` the launches are recorded and not run (what a call computes without its
    Triton kernels tells whether they do its work); with `skip_handed` [(start, nbytes), ...] only
    those handed a tensor inside one of these storages are not run."""

    launches: list[dict] = []
    replays = 0  # CUDA graph replays in the block: their kernels launch unseen, and cannot be skipped
    recording = False
    skipping = False
    skip_spans: list[tuple[int, int]] = []
    installed = False

    def __init__(self, run_kernels: bool = True, skip_handed=()):
        self.run_kernels, self.spans = run_kernels, [(start, start + n) for start, n in skip_handed]

    def __enter__(self):
        self.install()
        self.launches = LaunchSpy.launches = []
        LaunchSpy.replays = 0
        LaunchSpy.recording, LaunchSpy.skipping, LaunchSpy.skip_spans = True, not self.run_kernels, self.spans
        return self

    def __exit__(self, *exc):
        LaunchSpy.recording = LaunchSpy.skipping = False
        LaunchSpy.skip_spans = []
        self.replays = LaunchSpy.replays

    @classmethod
    def seen(cls, kernel: str, args: tuple, kwargs: dict) -> bool:
        """Record one launch; True when it must not run."""
        if not cls.recording:
            return False
        tensors = [{**tensor_facts(t), "start": t.data_ptr(), "nbytes": t.numel() * t.element_size()}
                   for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        skip = cls.skipping or any(lo <= t["start"] < hi for t in tensors for lo, hi in cls.skip_spans)
        cls.launches.append({"kernel": kernel, "tensors": tensors, "skipped": skip})
        return skip

    @classmethod
    def install(cls) -> None:
        if cls.installed:
            return
        import triton.runtime.jit as jit

        targets = [jit.JITFunction]
        try:
            import triton.runtime.interpreter as interpreter

            targets.append(interpreter.InterpretedFunction)
        except ImportError:
            pass
        for target in targets:
            original = target.run

            def run(self, *args, _original=original, **kwargs):
                if cls.seen(getattr(getattr(self, "fn", None), "__name__", "?"), args, kwargs):
                    return None
                return _original(self, *args, **kwargs)

            target.run = run
        # A compiled kernel relaunched as `compiled[grid](*args)` skips JITFunction.run (the gold's
        # kernels.launch.Launcher does, from a layer's second call on): watch that door too.
        try:
            from triton.compiler.compiler import CompiledKernel
        except ImportError:
            CompiledKernel = None
        if CompiledKernel is not None and hasattr(CompiledKernel, "__getitem__"):
            getitem = CompiledKernel.__getitem__

            def spied_getitem(self, grid, _getitem=getitem):
                runner = _getitem(self, grid)

                def launch(*args, **kwargs):
                    if cls.seen(getattr(self, "name", "?"), args, kwargs):
                        return None
                    return runner(*args, **kwargs)
                return launch

            CompiledKernel.__getitem__ = spied_getitem
        replay = torch.cuda.CUDAGraph.replay

        def spied_replay(self, _replay=replay):
            cls.replays += cls.recording
            return _replay(self)

        torch.cuda.CUDAGraph.replay = spied_replay
        cls.installed = True

    def integer_bytes(self) -> int:
        """Bytes of integer tensors the launches were handed, each address counted once."""
        spans = sorted((t["start"], t["start"] + t["nbytes"]) for launch in self.launches
                       for t in launch["tensors"] if not t["floating"] and t["dtype"] != "bool")
        total, end = 0, -1
        for start, stop in spans:
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total
