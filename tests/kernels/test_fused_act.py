"""Fused RMSNorm (+ int8 quantization) kernels against transformers' RMSNorm rounding."""

import pytest
import torch

from kernels.fused_act import rmsnorm, rmsnorm_quant, rmsnorm_quant_ref, rmsnorm_ref


@pytest.mark.parametrize("m,k", [(1, 128), (37, 128), (5, 4096)])
def test_rmsnorm_equals_transformers_rounding(device, m, k):
    x = (torch.randn(m, k, device=device) * 3).to(torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(k, device=device)).to(torch.bfloat16)
    want = rmsnorm_ref(x, weight, 1e-6)
    y, x_q, scale = rmsnorm_quant(x, weight, 1e-6)
    _, want_q, want_scale = rmsnorm_quant_ref(x, weight, 1e-6)
    if device == "cpu":  # bit for bit under the interpreter
        assert torch.equal(rmsnorm(x, weight, 1e-6), want) and torch.equal(y, want) and torch.equal(x_q, want_q)
    else:  # the GPU's rsqrt may round one ulp apart from torch's
        for got in (rmsnorm(x, weight, 1e-6), y):
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
        assert (x_q.int() - want_q.int()).abs().max() <= 1
    torch.testing.assert_close(scale, want_scale, rtol=1e-2 if device != "cpu" else 1.3e-6, atol=0)


def test_rmsnorm_names_a_bad_weight(device):
    with pytest.raises(ValueError, match="does not match K=64"):
        rmsnorm(torch.zeros(2, 64, device=device), torch.ones(32, device=device), 1e-6)
