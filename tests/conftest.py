"""Test setup shared by every test package.

Triton kernels run compiled on a CUDA GPU and under the interpreter (TRITON_INTERPRET=1) on a
CPU. The variable is read when `triton.jit` decorates a kernel, so it is set here, before any
test module imports `kernels`.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where the Triton kernels run: the GPU when there is one, else the CPU interpreter."""
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
