"""Fused RMSNorm (+ int8 quantization) and SiLU-mul-quant kernels against transformers' rounding."""

import pytest
import torch

from kernels import fused_act
from kernels.fused_act import (add_parts_ref, add_rmsnorm_quant, rmsnorm, rmsnorm_quant, rmsnorm_quant_ref, rmsnorm_ref,
                               silu_mul_quant, silu_mul_quant_ref)
from kernels.split_k import reduce_split_k
from kernels.w4a8_moe import sum_slots


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


@pytest.mark.parametrize("splits,m,k", [(1, 2, 256), (4, 1, 512), (8, 3, 96)])
def test_residual_add_and_norm_give_the_reduction_then_the_norm(device, splits, m, k):
    """o_proj's output as split-K partials (or, unsplit, its bf16 output), the residual added and
    the post-attention norm in one launch: the bits of the reduction kernel adding the residual,
    then rmsnorm_quant (the two launches it replaces in the decode step)."""
    torch.manual_seed(splits)
    residual = (torch.randn(m, k, device=device) * 4).to(torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(k, device=device)).to(torch.bfloat16)
    parts = torch.randn(splits, m, k, device=device) * 2
    if splits == 1:
        parts = parts.to(torch.bfloat16)  # an unsplit GEMM's output, W4A8Linear(partials=True) as [1, M, N]
        want_h = (residual.float() + parts[0].float()).to(torch.bfloat16)
    else:
        want_h = torch.empty_like(residual)
        reduce_split_k(parts, None, want_h, residual)
    h, y, x_q, scale = add_rmsnorm_quant(parts, residual, weight, 1e-6)
    want = rmsnorm_quant(want_h, weight, 1e-6)
    assert torch.equal(h, want_h) and not torch.equal(h, residual)
    for got, expected in zip((y, x_q, scale), want):
        assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="must be fp32 split-K partials or torch.bfloat16 slot outputs"):
        add_rmsnorm_quant(torch.zeros(2, m, k, dtype=torch.float16, device=device), residual, weight, 1e-6)
    with pytest.raises(ValueError, match=r"parts must be \[S, M, K\]"):
        add_rmsnorm_quant(parts[:, :, 1:], residual, weight, 1e-6)


@pytest.mark.parametrize("top_k,m,k", [(2, 3, 96), (8, 1, 512)])
def test_slot_outputs_add_and_norm_give_sum_slots_then_the_norm(device, top_k, m, k):
    """An MoE block's weighted slot outputs [T * k, K] (bf16, as a [k, T, K] view: the deferred layer
    output, decode_step.py) summed onto the residual and normalized: the bits of `sum_slots` adding
    the residual, then rmsnorm_quant; `add_parts_ref` (the torch fallback) gives the same h."""
    torch.manual_seed(top_k)
    residual = (torch.randn(m, k, device=device) * 4).to(torch.bfloat16)
    weight = (1 + 0.1 * torch.randn(k, device=device)).to(torch.bfloat16)
    slots = (torch.randn(m * top_k, k, device=device) * 2).to(torch.bfloat16)
    parts = slots.view(m, top_k, k).transpose(0, 1)
    want_h = sum_slots(slots, top_k, residual)
    h, y, x_q, scale = add_rmsnorm_quant(parts, residual, weight, 1e-6)
    assert torch.equal(h, want_h) and torch.equal(add_parts_ref(parts, residual), want_h)
    for got, expected in zip((y, x_q, scale), rmsnorm_quant(want_h, weight, 1e-6)):
        assert torch.equal(got, expected)


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
