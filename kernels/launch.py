"""Relaunching a compiled Triton kernel without `JITFunction.run`'s per-call work.

`kernel[grid](*args, **meta)` binds and specializes every argument on every call, builds a cache
key and looks the compiled kernel up. On the H100 host (a virtualized CPU) that costs about 20 us
of Python per launch: a bare `_w4a8_gemm_kernel[grid](...)` took 29.5 us of CPU for 9 us of GPU
(M=1, K=N=4096), while cuBLAS's whole `nn.Linear` took 29 us. A decode-step W4A8 linear made 3
such launches plus argument checks (136-290 us of CPU per call against 29-55 us for nn.Linear),
and HF eager decoding is CPU-bound, so this overhead set the decode speed.

`Launcher` holds one kernel with fixed meta-parameters. Its first call goes through the JIT,
which compiles (or finds) the kernel and returns the `CompiledKernel`; later calls launch that
through its own runner (`compiled[grid](*args)`, the call `JITFunction.run` ends with). The
caller owns the one condition this needs: every later call must fall in the specialization of the
first, i.e. the same dtypes, the same integers (Triton specializes ints that are 1 or multiples of
16) and 16-byte aligned pointers wherever the first call had them. `decode_plan` in w4a8_gemm.py
keys its launchers on exactly that. Under TRITON_INTERPRET (nothing compiled) every call goes
through the JIT. WB_FAST_LAUNCH=0 turns the direct launch off.
"""

import os

_direct_ok = os.environ.get("WB_FAST_LAUNCH", "1") != "0"


class Launcher:
    """`launcher(grid, *args)` == `jit_fn[grid](*args, **meta)`; grid is a 3-tuple, args are the
    kernel's non-constexpr parameters in order, meta its constexprs (by name) and launch options."""

    __slots__ = ("jit_fn", "meta", "constexprs", "compiled")

    def __init__(self, jit_fn, **meta):
        self.jit_fn, self.meta = jit_fn, meta
        self.constexprs: tuple | None = None  # constexpr values in signature order, after args
        self.compiled = None

    def __call__(self, grid: tuple, *args) -> None:
        global _direct_ok
        compiled = self.compiled
        if compiled is not None:
            try:
                compiled[grid](*args, *self.constexprs)  # grid: 3 entries (the runner reads all 3)
                return
            except (TypeError, IndexError):  # raised before launching, by a Triton whose runner takes
                _direct_ok = False  # other arguments: JIT from now on
                self.compiled = None
        kernel = self.jit_fn[grid](*args, **self.meta)
        if _direct_ok and self.constexprs is None and hasattr(kernel, "__getitem__") and hasattr(kernel, "run"):
            names = getattr(self.jit_fn, "arg_names", None)
            if names is not None and all(name in self.meta for name in names[len(args):]):
                self.constexprs = tuple(self.meta[name] for name in names[len(args):])
                self.compiled = kernel
