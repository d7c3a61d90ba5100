"""Test setup shared by every test package.

Triton kernels run compiled on a CUDA GPU and under the interpreter (TRITON_INTERPRET=1) on a
CPU. The variable is read when `triton.jit` decorates a kernel, so it is set here, before any
test module imports `kernels`.
"""

import os
import secrets

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs as many workers as CI has cores, and the checks start processes of their
    # own: at torch's default of one thread per core each, the tiny ops of these tests spend their
    # time in thread hand-offs (a 1 s interop test took 60 s beside another worker). One thread
    # per process, inherited by every process a test starts.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

import pytest  # noqa: E402

# The checks' hidden seed picks the tiny checkpoints every check runs on; a test run draws one and
# prints it, so that a failure on one CI draw replays here: WB_TEST_CHECK_SEED=N pytest ...
# (set before xdist starts its workers, which inherit it).
CHECK_SEED = os.environ.setdefault("WB_TEST_CHECK_SEED", str(1 + secrets.randbelow(2**31 - 2)))


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line(f"check seed {CHECK_SEED} (replay: WB_TEST_CHECK_SEED={CHECK_SEED} pytest ...)")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    """Where the Triton kernels run: the GPU when there is one, else the CPU interpreter."""
    return DEVICE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
