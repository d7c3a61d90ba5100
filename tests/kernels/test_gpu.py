"""GPU-only checks: compiled kernels at real layer shapes, autotuning and its per-GPU cache,
CUDA-graph capture. The CPU interpreter covers the same numerics in the other test files."""

import json

import pytest
import torch

from kernels import W4A8Linear, pack_w4a8, quantize_weight, w4a8_gemm, w4a8_linear_ref
from kernels import autotune

from .test_w4a8_gemm import assert_matches_contract

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")


@pytest.mark.parametrize("m", [1, 16, 300])
@pytest.mark.parametrize("group_size", [-1, 128])
def test_autotuned_kernel_at_qwen3_shapes(m, group_size, tmp_path, monkeypatch):
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("WB_SHIPPED_CONFIGS", "0")  # time the candidates, whatever this GPU ships
    monkeypatch.setattr(autotune, "_caches", {})
    n, k = 2048, 4096
    q, scales = quantize_weight(torch.randn(n, k, device="cuda") / k**0.5, group_size)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = w4a8_gemm(x, pack_w4a8(q, group_size), scales.t().contiguous(), group_size)
    assert_matches_contract(y, w4a8_linear_ref(x, q, scales))
    cache = json.loads(next((tmp_path / "autotune").glob("*.json")).read_text())
    assert any(key.startswith(f"w4a8|N{n}|K{k}|g{group_size}|M{autotune.m_bucket(m)}") for key in cache)


def test_a_known_gpu_runs_a_new_shape_without_tuning(tmp_path, monkeypatch):
    shipped = autotune.SHIPPED_DIR / autotune.gpu_file_name(torch.cuda.get_device_name())
    if not shipped.exists():
        pytest.skip(f"no configs shipped for {torch.cuda.get_device_name()} ({shipped.name})")
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "_caches", {})
    n, k = 1536, 2560  # no Qwen3 layer has this shape: served by the nearest shipped one
    q, scales = quantize_weight(torch.randn(n, k, device="cuda") / k**0.5, 128)
    x = torch.randn(4, k, device="cuda", dtype=torch.bfloat16)
    y = w4a8_gemm(x, pack_w4a8(q, 128), scales.t().contiguous(), 128)
    assert_matches_contract(y, w4a8_linear_ref(x, q, scales))
    assert not autotune.config_cache(torch.device("cuda")).tuned and not (tmp_path / "autotune").exists()


def test_decode_step_captures_in_a_cuda_graph():
    layer = W4A8Linear.from_float(torch.nn.Linear(1024, 1024, bias=False), 128).cuda()
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    eager = layer(x)  # tunes and compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(x)
    graph.replay()
    assert torch.equal(out, eager)
