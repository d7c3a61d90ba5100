"""Fused W4A8 GEMM (Triton) against the fp64 contract reference, over odd shapes and both
launch strategies (decode split-K, prefill tiles)."""

import pytest
import torch

from kernels import pack_w4a8, per_token_quant_int8, quantize_weight, w4a8_gemm, w4a8_linear_ref
from kernels.w4a8_gemm import DecodePlan, candidate_configs, sm_count
from kernels.w4a8_gemv import GEMV_MAX_M, is_gemv

# One bf16/fp16 rounding of the output plus fp32 accumulation order (the only freedom the
# contract leaves): relative to each output, plus a floor tied to the largest output.
RTOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 1e-5}


def assert_matches_contract(y, ref):
    assert y.dtype == ref.dtype and y.shape == ref.shape
    atol = 1e-4 * ref.float().abs().max().item()
    torch.testing.assert_close(y.float(), ref.float(), rtol=RTOL[ref.dtype], atol=atol)


def make_problem(m, n, k, group_size, dtype, device, bias=False):
    w = torch.randn(n, k) / k**0.5
    q, scales = quantize_weight(w, group_size)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    ref = w4a8_linear_ref(x, q, scales, b)
    to = (lambda t: t.to(device) if t is not None else None)
    return to(x), to(pack_w4a8(q, group_size)), to(scales.t().contiguous()), to(b), ref.to(device)


@pytest.mark.parametrize("m", [1, 3, 17, 100])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
def test_matches_reference(device, m, group_size):
    x, packed, scales, _, ref = make_problem(m, 384, 640, group_size, torch.bfloat16, device)
    assert_matches_contract(w4a8_gemm(x, packed, scales, group_size), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_activation_dtypes(device, dtype):
    x, packed, scales, _, ref = make_problem(5, 256, 384, 128, dtype, device)
    assert_matches_contract(w4a8_gemm(x, packed, scales, 128), ref)


@pytest.mark.parametrize("m,group_size", [(1, -1), (17, 64)])
def test_bias_is_added(device, m, group_size):
    x, packed, scales, bias, ref = make_problem(m, 128, 256, group_size, torch.bfloat16, device, bias=True)
    assert_matches_contract(w4a8_gemm(x, packed, scales, group_size, bias), ref)


@pytest.mark.parametrize("k,group_size", [(96, 32), (40, -1), (320, 64)])
def test_k_padded_to_the_kernel_layout(device, k, group_size):
    # K_pad > K: the high half of the packed weight starts past K's last group
    x, packed, scales, _, ref = make_problem(3, 64, k, group_size, torch.bfloat16, device)
    assert_matches_contract(w4a8_gemm(x, packed, scales, group_size), ref)


@pytest.mark.parametrize("m", [1, 16, 33])
def test_every_candidate_config_agrees(device, m):
    """Each launch strategy the autotuner may pick (split-K 1..16, every tile) is correct."""
    group_size = 128
    x, packed, scales, _, ref = make_problem(m, 256, 1024, group_size, torch.bfloat16, device)
    configs = candidate_configs(m, 256, 1024, group_size, sm_count(torch.device(device)))
    assert len({c["SPLIT_K"] for c in configs}) > 1 or m > 16
    for config in configs[:: 1 if device == "cuda" else 3]:  # the interpreter is slow: a third
        assert_matches_contract(w4a8_gemm(x, packed, scales, group_size, config=config), ref)


@pytest.mark.parametrize("m", [2, 16])
def test_residual_is_added_as_torch_adds_it(device, m):
    """residual=: the bits of `residual + w4a8_gemm(...)` for the GEMV, the tile GEMM, split or not
    (the tile store or the split-K reduction adds it), through w4a8_gemm and the decode plan."""
    group_size = 64
    x, packed, scales, bias, _ = make_problem(m, 192, 512, group_size, torch.bfloat16, device, bias=True)
    residual = (torch.randn(m, 192, device=device) * 8).to(torch.bfloat16)
    configs = candidate_configs(m, 192, 512, group_size, sm_count(torch.device(device)))
    picked = {(is_gemv(c), c["SPLIT_K"] > 1): c for c in reversed(configs)}  # first of each kind
    assert len(picked) == (4 if m <= GEMV_MAX_M else 2)
    x_q, x_scale = per_token_quant_int8(x)
    for config in picked.values():
        plain = w4a8_gemm(x, packed, scales, group_size, bias, config=config)
        want = residual + plain
        assert not torch.equal(want, plain)
        assert torch.equal(w4a8_gemm(x, packed, scales, group_size, bias, config=config, residual=residual), want)
        plan = DecodePlan(m, 512, torch.bfloat16, packed, scales, bias, group_size, config)
        assert plan.accepts_residual(residual) and not plan.accepts_residual(residual.t().contiguous().t())
        assert torch.equal(plan.quantized(x_q, x_scale, packed, scales, bias, residual), want)
        assert torch.equal(plan.quantized(x_q, x_scale, packed, scales, bias), plain)  # both variants kept
    with pytest.raises(ValueError, match=r"residual must be torch.bfloat16 \[2, 192\]"):
        w4a8_gemm(x[:2], packed, scales, group_size, residual=residual[:1])


def test_prequantized_activations(device):
    x, packed, scales, _, ref = make_problem(4, 128, 256, -1, torch.bfloat16, device)
    x_q, x_scale = per_token_quant_int8(x)
    assert_matches_contract(w4a8_gemm(x_q, packed, scales, -1, x_scale=x_scale), ref)


def test_zero_rows_and_empty_batch(device):
    x, packed, scales, _, _ = make_problem(4, 128, 256, -1, torch.bfloat16, device)
    x[2] = 0
    y = w4a8_gemm(x, packed, scales, -1)
    assert torch.isfinite(y.float()).all() and (y[2] == 0).all()
    assert w4a8_gemm(x[:0], packed, scales, -1).shape == (0, 128)


def test_split_k_is_deterministic(device):
    x, packed, scales, _, _ = make_problem(2, 256, 1024, 64, torch.bfloat16, device)
    config = next(c for c in candidate_configs(2, 256, 1024, 64, sm_count(torch.device(device))) if c["SPLIT_K"] > 1)
    first = w4a8_gemm(x, packed, scales, 64, config=config)
    assert torch.equal(first, w4a8_gemm(x, packed, scales, 64, config=config))


def test_bad_shapes_are_named(device):
    x, packed, scales, _, _ = make_problem(2, 128, 256, 128, torch.bfloat16, device)
    with pytest.raises(ValueError, match=r"packed_w must be int8 \[N, 256\] for K=512"):
        w4a8_gemm(torch.randn(2, 512, device=device), packed, scales, 128)
    with pytest.raises(ValueError, match=r"w_scale must be fp32 \[2, 128\]"):
        w4a8_gemm(x, packed, scales[:1], 128)
    with pytest.raises(ValueError, match="x_scale"):
        w4a8_gemm(torch.zeros(2, 256, dtype=torch.int8, device=device), packed, scales, 128)
    k = (1 << 17) + 64  # per channel, the int32 sums of 16 q * x could overflow
    with pytest.raises(ValueError, match=r"K <= 131072 .*got K=131136"):
        w4a8_gemm(torch.randn(1, k, device=device), torch.zeros(1, k // 2, dtype=torch.int8, device=device),
                  torch.ones(1, 1, device=device), -1)

