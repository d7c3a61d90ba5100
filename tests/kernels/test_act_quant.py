"""Triton per-token int8 quantization against the torch reference: bit-exact."""

import pytest
import torch

from kernels import per_token_quant_int8, per_token_quant_int8_ref


@pytest.mark.parametrize("m,k", [(1, 128), (3, 384), (17, 100), (100, 256), (5, 1000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_reference_exactly(device, m, k, dtype):
    x = (torch.randn(m, k) * 10 ** torch.randn(m, 1)).to(dtype).to(device)
    x_q, scale = per_token_quant_int8(x)
    ref_q, ref_scale = per_token_quant_int8_ref(x)
    assert x_q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (m, 1)
    bad = (x_q != ref_q).nonzero()
    assert len(bad) == 0, f"{len(bad)} codes differ, first at {bad[0].tolist()}: x={x[tuple(bad[0])].item()!r} " \
        f"s={ref_scale[bad[0][0], 0].item()!r} got {x_q[tuple(bad[0])].item()} want {ref_q[tuple(bad[0])].item()}"
    assert torch.equal(scale, ref_scale), (scale - ref_scale).abs().max()


def test_zero_rows_give_zero_codes_and_finite_scales(device):
    x = torch.randn(6, 256, dtype=torch.bfloat16, device=device)
    x[1] = 0
    x[4] = 0
    x_q, scale = per_token_quant_int8(x)
    assert torch.isfinite(scale).all() and (scale[[1, 4]] == 0).all()
    assert (x_q[[1, 4]] == 0).all() and (x_q[0] != 0).any()


def test_ties_round_half_to_even(device):
    # absmax 127 makes s_x = 1, so x_q = round(x): exact halves, and the float just below 0.5
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, -126.5]], device=device)
    x_q, _ = per_token_quant_int8(x)
    assert x_q[0].tolist() == [127, 0, 2, 2, 0, -2, 0, -126]


def test_strided_input(device):
    x = torch.randn(64, 32, dtype=torch.bfloat16, device=device).t()  # [32, 64], column-major
    assert torch.equal(per_token_quant_int8(x)[0], per_token_quant_int8_ref(x)[0])


def test_rejects_bad_input(device):
    with pytest.raises(ValueError, match="x \\[M, K\\]"):
        per_token_quant_int8(torch.randn(2, 3, 4, device=device))
    with pytest.raises(ValueError, match="float tensor"):
        per_token_quant_int8(torch.ones(2, 4, dtype=torch.int32, device=device))
