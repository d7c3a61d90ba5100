"""W8A8 GEMM (Triton) against the fp64 reference."""

import pytest
import torch

from kernels import per_token_quant_int8, w8a8_gemm, w8a8_gemm_ref
from kernels.w8a8_gemm import candidate_configs

from .test_w4a8_gemm import assert_matches_contract


def make_problem(m, n, k, device):
    x_q, x_scale = per_token_quant_int8(torch.randn(m, k, device=device))
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
    w_scale = torch.rand(n, device=device) / 100
    return x_q, x_scale, w_q, w_scale


@pytest.mark.parametrize("m", [1, 3, 17, 100])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_matches_reference(device, m, out_dtype):
    x_q, x_scale, w_q, w_scale = make_problem(m, 384, 640, device)
    ref = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, out_dtype=out_dtype)
    assert_matches_contract(w8a8_gemm(x_q, x_scale, w_q, w_scale, out_dtype=out_dtype), ref)


def test_bias_and_every_config(device):
    x_q, x_scale, w_q, w_scale = make_problem(20, 256, 384, device)
    bias = torch.randn(256, dtype=torch.bfloat16, device=device)
    ref = w8a8_gemm_ref(x_q, x_scale, w_q, w_scale, bias)
    for config in candidate_configs(20)[:: 1 if device == "cuda" else 3]:
        assert_matches_contract(w8a8_gemm(x_q, x_scale, w_q, w_scale, bias, config=config), ref)


def test_bad_shapes_are_named(device):
    x_q, x_scale, w_q, w_scale = make_problem(2, 64, 128, device)
    with pytest.raises(ValueError, match="K mismatch"):
        w8a8_gemm(x_q, x_scale, w_q[:, :64], w_scale)
    with pytest.raises(ValueError, match="one per output channel"):
        w8a8_gemm(x_q, x_scale, w_q, w_scale[:10])
    with pytest.raises(ValueError, match="int8"):
        w8a8_gemm(x_q.float(), x_scale, w_q, w_scale)
