"""The torch references that define the W4A8 contract, and the W4A4 accuracy comparison."""

import pytest
import torch

from kernels.reference import (dequantize_weight, per_token_quant_int4_ref, per_token_quant_int8_ref, quantize_weight,
                               w4a4_linear_ref, w4a8_linear_ref)


@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_quantize_weight_follows_the_contract(group_size):
    w = torch.randn(48, 256)
    q, scales = quantize_weight(w, group_size)
    gs = 256 if group_size == -1 else group_size
    assert q.dtype == torch.int8 and scales.shape == (48, 256 // gs)
    assert q.min() >= -8 and q.max() <= 7
    groups = w.reshape(48, -1, gs)
    torch.testing.assert_close(scales, groups.abs().amax(-1) / 7)
    # the absmax element of each group maps to +-7, and the error is at most half a step
    err = (dequantize_weight(q, scales) - w).reshape(48, -1, gs).abs()
    assert (err <= scales[..., None] / 2 + 1e-6).all()


def test_quantize_weight_zero_group_gives_zero_codes():
    w = torch.randn(8, 64)
    w[3] = 0
    q, scales = quantize_weight(w, 32)
    assert (q[3] == 0).all() and (scales[3] == 0).all() and torch.isfinite(scales).all()


def test_quantize_weight_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_size must be one of"):
        quantize_weight(torch.randn(8, 64), 48)
    with pytest.raises(ValueError, match="K=96 is not a multiple of group_size=64"):
        quantize_weight(torch.randn(8, 96), 64)


def test_per_token_quant_int8_ref_rounds_half_to_even_and_keeps_zero_rows():
    x = torch.tensor([[127.0, 0.5, 1.5, -2.5, 3.49], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q, s = per_token_quant_int8_ref(x)
    assert q[0].tolist() == [127, 0, 2, -2, 3]
    assert s[:, 0].tolist() == [1.0, 0.0] and (q[1] == 0).all()


def test_w4a4_costs_more_accuracy_than_w4a8_on_the_same_layer():
    # A linear layer with realistic activations: mostly Gaussian plus a few outlier channels,
    # as in transformer hidden states. Errors are relative to the bf16 layer.
    k, n = 512, 256
    w = torch.randn(n, k) / k**0.5
    x = torch.randn(64, k)
    x[:, :4] *= 20
    q, scales = quantize_weight(w, 128)
    ref = x.to(torch.bfloat16).float() @ w.to(torch.bfloat16).float().t()

    def rel_err(y):
        return ((y.float() - ref).norm() / ref.norm()).item()

    err_w4a8 = rel_err(w4a8_linear_ref(x, q, scales))
    err_w4a4 = rel_err(w4a4_linear_ref(x, q, scales))
    x4, _ = per_token_quant_int4_ref(x)
    assert x4.min() >= -8 and x4.max() <= 7
    print(f"relative error vs bf16: W4A8 {err_w4a8:.4f}, W4A4 {err_w4a4:.4f}")
    assert 0.01 < err_w4a8 < 0.15  # int4 weights dominate: ~5-10% relative error
    assert err_w4a4 > 2 * err_w4a8  # 4-bit activations with outliers lose most small values
