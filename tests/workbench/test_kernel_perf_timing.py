"""kernel_perf's timing path (probes/kernel_probe.py) as far as it runs without a GPU: weight
copies rotated past L2, both sides measured alike, the eager fallback reported with its reason.
The CUDA-graph path runs on a GPU host (`workbench validate tasks/w4a8_gemm_kernel.yaml --device
cuda`)."""

import types
from pathlib import Path

import pytest
import torch

PROBES = Path(__file__).resolve().parents[2] / "workbench/checks/probes"


@pytest.fixture(scope="module")
def probe():
    """The probe as the harness runs it: its text after the spies' (workbench.checks.probing._payload)."""
    module = types.ModuleType("kernel_probe")
    exec(compile((PROBES / "spies.py").read_text() + "\n" + (PROBES / "kernel_probe.py").read_text(),
                 str(PROBES / "kernel_probe.py"), "exec"), module.__dict__)
    return module


def test_rotating_copies_exceed_l2_and_are_distinct(probe):
    weights = [torch.zeros(1024, 1024, dtype=torch.int32), torch.zeros(1024, 8, dtype=torch.bfloat16)]
    copies = probe.rotating(weights)
    per_call = 1024 * 1024 * 4 + 1024 * 8 * 2
    assert len(copies) == -(-probe.ROTATE_BYTES // per_call) and len(copies) * per_call >= probe.ROTATE_BYTES
    assert len({c[0].data_ptr() for c in copies}) == len(copies)  # each call reads other memory
    assert len(probe.rotating([torch.zeros(2**28, dtype=torch.int8)])) == 1


def test_perf_case_times_candidate_and_bf16_alike_and_says_why_eager(probe, monkeypatch):
    monkeypatch.setattr(probe, "ROTATE_BYTES", 4096)  # a few copies, not 256 MB, on a CPU
    seen = []

    def candidate(x, weight_packed, weight_scale, group_size):
        seen.append(weight_packed.data_ptr())
        return torch.zeros(x.shape[0], weight_packed.shape[0], dtype=torch.bfloat16)

    case = {"x": torch.randn(2, 64, dtype=torch.bfloat16), "weight_packed": torch.zeros(32, 8, dtype=torch.int32),
            "weight_scale": torch.ones(32, 2, dtype=torch.bfloat16), "group_size": 32}
    timing = probe.perf_case(candidate, case, "cpu")
    assert timing["shape"] == [2, 32, 64, 32]
    assert timing["captured"] is False and "CUDA graphs need a CUDA device" in timing["why_eager"]
    assert timing["candidate_ms"] > 0 and timing["bf16_ms"] > 0
    assert timing["candidate_ms"] == timing["candidate_eager_ms"]
    assert len(set(seen)) > 1  # the calls went round the weight copies
