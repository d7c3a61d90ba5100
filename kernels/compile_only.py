"""Build the Triton kernels for a GPU that is not here: sm_90a cubins on a CPU-only machine.

Without a GPU the tests run every kernel under TRITON_INTERPRET, which executes the kernel's
Python on numpy and never compiles it. A kernel the interpreter runs can still fail to build for
a GPU (an inline-asm constraint, a layout the MMA lowering rejects, more shared memory or
registers than an SM has), and the CPU suite would never know. Triton's compiler needs no GPU,
only a target: `compile_only(arch)` makes Triton's active driver one that reports an sm_<arch>
device, takes the CPU tensors' addresses as they are, hands each cubin to `cuobjdump` (shipped
with Triton) for its registers, spills and SASS instead of loading it, and launches nothing.
The package's own wrappers then run as they do on a GPU (launch configs, split-K, decode plans)
and every launch builds its kernel through Triton's whole pipeline (TTIR, TTGIR, LLVM IR, PTX,
ptxas); outputs stay uninitialized.

The build is the installed Triton's (CI: the newest release; the H100/H200 device: 3.6), so it
shows what that version makes of the kernels, not what another would. compile_check.py drives
the package's launches through it on real model shapes.
"""

import contextlib
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver
from triton.runtime.errors import OutOfResources

from . import pdl

# What a launch on these parts would check, from the CUDA programming guide's table of compute
# capabilities (sm_90: 227 KB of shared memory per block, 64K registers per SM and per block).
DEVICES = {90: dict(name="H100/H200 (sm_90a)", max_shared_mem=232448, multiprocessor_count=132,
                    max_num_regs=65536, warpSize=32)}
MARKED_OPCODES = ("IGMMA", "HGMMA", "IMMA", "HMMA", "IDP.4A", "LDGSTS", "WARPGROUP", "PRMT",  # SASS opcode prefixes
                  "ACQBULK", "PREEXIT")  # griddepcontrol.wait, griddepcontrol.launch_dependents (pdl.py)
MEMORY_OPCODES = ("LDG", "STG", "LDGSTS", "ATOMG", "RED", "UBLKCP", "UTMALDG")


@dataclass
class KernelBuild:
    """One compiled kernel: its function, constexprs and launch options, and what ptxas made of it."""

    kernel: str
    meta: dict
    where: str = ""  # the launch that built it (CompileOnlyDriver.where at the time)
    shared: int = 0  # bytes of shared memory per program
    registers: int = 0  # per thread
    local: int = 0  # bytes of local memory per thread: register spills (or stack arrays)
    opcodes: Counter = field(default_factory=Counter)  # SASS opcodes of MARKED_OPCODES, by count
    instructions: int = 0  # SASS instructions in all
    loop_instructions: int = 0  # of the longest loop's body (a GEMM's K step): what each step issues
    memory_before_wait: bool = False  # a global load or store precedes griddepcontrol.wait in the SASS

    def marks(self) -> str:
        return " ".join(f"{op} {n}" for op, n in sorted(self.opcodes.items()) if n) or "-"


def cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def inspect_cubin(cubin: bytes, build: KernelBuild) -> None:
    """Fill registers, local, shared and opcodes from cuobjdump's reading of the cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(cubin)
        usage = subprocess.run([cuobjdump(), "--dump-resource-usage", path], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([cuobjdump(), "-sass", path], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    build.registers = int(fields.get("REG", 0))
    build.local = int(fields.get("LOCAL", 0)) + int(fields.get("STACK", 0))
    build.shared = max(build.shared, int(fields.get("SHARED", 0)))
    ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    build.instructions = len(ops)
    # a loop ends in a branch back: its body is the 16-byte instructions from the target to the branch
    backward = [(int(at, 16) - int(to, 16)) // 16 + 1 for at, to in
                re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\S*\s+0x([0-9a-f]+)", sass, re.M)
                if int(to, 16) < int(at, 16)]
    build.loop_instructions = max(backward, default=0)
    build.opcodes = Counter(mark for op in ops for mark in MARKED_OPCODES if op.startswith(mark))
    if "ACQBULK" in ops:
        build.memory_before_wait = any(op.startswith(MEMORY_OPCODES) for op in ops[:ops.index("ACQBULK")])


class _Utils:
    def __init__(self, owner: "CompileOnlyDriver"):
        self.owner = owner

    def get_device_properties(self, device) -> dict:
        return dict(self.owner.properties)

    def load_binary(self, name, cubin, shared, device):
        """Instead of loading: read the cubin's resource use; refuse what a launch would refuse."""
        build = self.owner.builds[-1]  # Triton makes the launcher (which records) just before this
        inspect_cubin(cubin, build)
        threads = build.meta["num_warps"] * 32
        if build.registers * threads > self.owner.properties["max_num_regs"]:
            raise OutOfResources(build.registers * threads, self.owner.properties["max_num_regs"], "registers")
        # a module handle that is not None, or Triton would load (and record) it again on every launch
        return name, name, build.registers, build.local, 1024

    def unload_module(self, module) -> None:
        pass


class CompileOnlyDriver(DriverBase):
    """A Triton driver for a CUDA device of compute capability `arch` that is not there."""

    def __init__(self, arch: int = 90):
        super().__init__()
        if arch not in DEVICES:
            raise ValueError(f"no device limits known for sm_{arch}; known: {sorted(DEVICES)}")
        self.arch, self.properties = arch, DEVICES[arch]
        self.builds: list[KernelBuild] = []
        self.where = ""  # set by the caller before each launch, recorded with what it builds
        self.utils = _Utils(self)
        owner = self

        class Launcher:  # made once per compiled kernel; launching is a no-op
            def __init__(self, src, metadata):
                params = src.fn.params  # the declared constexprs (not ints that Triton specialized to 1)
                constants = {params[path[0]].name: value for path, value in src.constants.items()
                             if len(path) == 1 and params[path[0]].is_constexpr}
                owner.builds.append(KernelBuild(metadata.name, {
                    **constants, "num_warps": metadata.num_warps, "num_stages": metadata.num_stages,
                    "launch_pdl": bool(getattr(metadata, "launch_pdl", False))},
                    owner.where, shared=metadata.shared))

            def __call__(self, *args, **kwargs) -> None:
                pass

        self.launcher_cls = Launcher

    @classmethod
    def is_active(cls) -> bool:
        return True

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.arch, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_benchmarker(self):
        raise RuntimeError("compile_only builds kernels; it cannot time them")

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device) -> None:
        pass

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_device_capability(self, device=None) -> tuple[int, int]:
        return divmod(self.arch, 10)


@contextlib.contextmanager
def compile_only(arch: int = 90):
    """Within: every Triton launch builds for sm_<arch> and runs nothing; yields the driver, whose
    `builds` lists what was compiled. Use it in a process of its own: kernels compiled before (for
    another target) stay in their JIT caches, and interpreted kernels cannot be compiled at all."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_only needs TRITON_INTERPRET unset: under the interpreter Triton compiles nothing")
    fake = CompileOnlyDriver(arch)
    before = driver._active  # None until first used (reset_active would look for a GPU driver, and raise)
    driver.set_active(fake)
    pdl.FORCE = arch >= 90  # the launches as a Hopper GPU runs them (pdl.py)
    try:
        yield fake
    finally:
        driver._active = before
        pdl.FORCE = False
