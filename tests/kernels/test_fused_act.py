"""Fused RMSNorm (+ int8 quantization) and SiLU-mul-quant kernels against transformers' rounding."""

import pytest
import torch

from kernels import fused_act
from kernels.act_quant import per_token_quant_int8
from kernels.fused_act import (rmsnorm, rmsnorm_quant, rmsnorm_quant_ref, rmsnorm_ref, silu_mul_absmax, silu_mul_quant,
                               silu_mul_quant_ref)
from kernels.linear import W4A8Linear
from kernels.split_k import reduce_split_k
from kernels.w4a8_gemm import DecodePlan, candidate_configs, sm_count
from kernels.w4a8_gemv import is_gemv


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


@pytest.mark.parametrize("m,i", [(3, 64), (2, 3000), (1, 2048)])
def test_silu_mul_quant_equals_unfused_rounding(device, monkeypatch, m, i):
    """(2, 3000) and (1, 2048) take the split rows (2 launches over 1024-element chunks, the last
    one partial at 3000); forced onto one program per row they must give the same bits."""
    h = (torch.randn(m, 2 * i, device=device) * 4).to(torch.bfloat16)
    h[-1, [i - 1, 2 * i - 1]] = 64  # the last row's absmax in its last (partial) chunk
    if m > 1:
        h[0, i:] = 0  # row 0: up = 0, an all-zero product -> scale 0, no NaN
    x_q, scale = silu_mul_quant(h)
    want_q, want_scale = silu_mul_quant_ref(h)
    assert m == 1 or (scale[0].item() == 0 and not x_q[0].any())
    if device == "cpu":
        assert torch.equal(x_q, want_q) and torch.equal(scale, want_scale)
    else:  # the GPU's exp may round SiLU one bf16 ulp apart from torch's
        assert (x_q.int() - want_q.int()).abs().max() <= 1
        torch.testing.assert_close(scale, want_scale, rtol=1e-2, atol=0)
    monkeypatch.setattr(fused_act, "SPLIT_MAX_ROWS", 0)
    one_program_q, one_program_scale = silu_mul_quant(h)
    assert torch.equal(x_q, one_program_q) and torch.equal(scale, one_program_scale)


@pytest.mark.parametrize("m,i", [(1, 64), (3, 3000)])
def test_silu_mul_absmax_feeds_the_down_gemv_silu_mul_quants_values(device, m, i):
    """silu_mul_absmax (the product and its chunk maxima, one launch) into the down projection's
    GEMV, which quantizes as it loads: the bits of silu_mul_quant's int8 path; 3000 has a partial
    last chunk, and the last row's absmax sits in it. From gate_up's split-K partials: the bits of
    the reduced h."""
    torch.manual_seed(4)
    h = (torch.randn(m, 2 * i, device=device) * 4).to(torch.bfloat16)
    h[-1, [i - 1, 2 * i - 1]] = 64
    act, absmax = silu_mul_absmax(h)
    x_q, scale = silu_mul_quant(h)
    assert absmax.shape == (m, -(-i // fused_act.SPLIT_CHUNK))
    assert torch.equal(absmax.amax(1, keepdim=True), act.float().abs().amax(1, keepdim=True))
    assert all(torch.equal(a, b) for a, b in zip(per_token_quant_int8(act), (x_q, scale)))
    down = W4A8Linear.from_float(torch.nn.Linear(i, 64, bias=False, device=device), group_size=-1)
    want = down.forward_int8(x_q, scale, torch.bfloat16)
    gemv = next(c for c in candidate_configs(m, 64, i, -1, sm_count(torch.device(device))) if is_gemv(c))
    down._plans[(m, torch.bfloat16)] = DecodePlan(m, i, torch.bfloat16, down.qweight, down.scales, None, -1, gemv)
    assert torch.equal(down.forward_int8(act, absmax, torch.bfloat16), want)
    assert down._plans[(m, torch.bfloat16)].float_gemv  # the rows went through the GEMV's on-load path
    parts = torch.randn(2, m, 2 * i, device=device) * 4  # gate_up's split-K partials, summed on load
    reduced = torch.empty(m, 2 * i, dtype=torch.bfloat16, device=device)
    reduce_split_k(parts, None, reduced)
    assert all(torch.equal(a, b) for a, b in zip(silu_mul_absmax(parts, torch.bfloat16), silu_mul_absmax(reduced)))
    with pytest.raises(ValueError, match="partials must be contiguous fp32"):
        silu_mul_absmax(parts)
