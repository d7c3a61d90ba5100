"""Programmatic dependent launch (Hopper): a decode step's next kernel starts while this one runs.

A decode step of a W4A8 model is a chain of small kernels (about 15 per layer, 1-9 us each on an
H200, most of them a few KB to a few MB of traffic), each waiting for the one before it. Without
PDL a kernel's programs are scheduled only once the previous kernel has finished, so each link
of the chain pays the launch, the block scheduling and the first loads' latency in series.
Launched with PDL (`launch_pdl=True`, captured into the CUDA graph as a programmatic edge), a
kernel is scheduled as soon as every program of the one before it has executed
`griddepcontrol.launch_dependents`; its programs then block in `griddepcontrol.wait` until that
kernel has finished and its writes are visible.

The rule that keeps this exact: every kernel launched with PDL calls `pdl_enter` first, before it
reads or writes anything, so it sees every earlier kernel's writes (the wait covers the kernel
before, and that one waited in turn) and no earlier kernel can still be reading what it writes.
`pdl_enter` then releases the next kernel, which is the one level of overlap PDL is for.

On by default on CUDA devices of compute capability 9.0 or more; `WB_PDL=0` turns it off (kernels
then compile without the two instructions). Never under TRITON_INTERPRET.
"""

import functools
import os

import torch
import triton
import triton.language as tl

from .autotune import interpreting


@triton.jit
def pdl_enter(USE_PDL: tl.constexpr):
    """Wait for the kernel before (its writes visible), then let the next kernel be scheduled."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


FORCE = False  # compile_only.py: build every launch as an sm_90 GPU runs it


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL (see the module docstring)."""
    return FORCE or _enabled(device.type, device.index, os.environ.get("WB_PDL", "1"), interpreting())


@functools.lru_cache(maxsize=None)  # called for every launch of the eager decode path
def _enabled(device_type: str, index: int | None, setting: str, interpreted: bool) -> bool:
    if device_type != "cuda" or interpreted or setting == "0" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(index if index is not None else torch.cuda.current_device())[0] >= 9


def pdl(device: torch.device, early: bool = True) -> dict:
    """The launch keywords of a kernel that starts with `pdl_enter(USE_PDL)`. early=False: the
    kernel still releases the next one, but is itself scheduled only once the kernel before has
    finished. The tensor-core GEMM (decode rows 5-16, prefill) launches so: scheduled early,
    Qwen3-8B decoded 2839-2851 tok/s at batch 16 in two runs, against 3206 not early (H200)."""
    if not pdl_enabled(device):
        return {"USE_PDL": False}
    return {"USE_PDL": True, "launch_pdl": early}
