"""W4A8Linear: construction from float and from both on-disk formats, both execution paths."""

import copy

import pytest
import torch
from torch import nn

from kernels import W4A8Linear, pack_awq, pack_ct, pack_w4a8, quantize_weight, w4a8_gemm, w4a8_linear_ref

from .test_w4a8_gemm import assert_matches_contract


@pytest.mark.parametrize("group_size", [-1, 32, 128])
@pytest.mark.parametrize("use_triton", [True, False])
def test_from_float_matches_reference(device, group_size, use_triton):
    linear = nn.Linear(256, 128, bias=True).to(torch.bfloat16)
    layer = W4A8Linear.from_float(linear, group_size, use_triton=use_triton).to(device)
    assert {name for name, _ in layer.named_parameters()} == set()  # buffers only
    x = torch.randn(2, 5, 256, dtype=torch.bfloat16)
    q, scales = quantize_weight(linear.weight, group_size)
    ref = w4a8_linear_ref(x.reshape(10, 256), q, scales, linear.bias.detach()).reshape(2, 5, 128)
    assert_matches_contract(layer(x.to(device)), ref.to(device))


def test_triton_and_torch_paths_agree(device):
    layer = W4A8Linear.from_float(nn.Linear(384, 256, bias=False), 64).to(device)
    x = torch.randn(7, 384, dtype=torch.bfloat16, device=device)
    y_triton = layer(x)
    layer.use_triton = False
    torch.testing.assert_close(y_triton.float(), layer(x).float(), rtol=2**-7, atol=1e-3)


@pytest.mark.parametrize("group_size", [-1, 128])
def test_from_packed_formats_match_from_quantized(device, group_size):
    w = torch.randn(64, 256)
    q, scales = quantize_weight(w, group_size)  # scales [N, G]
    ref = W4A8Linear.from_quantized(q, scales)
    awq = W4A8Linear.from_packed(pack_awq(q), scales.t().half(), fmt="awq", in_features=256)
    ct = W4A8Linear.from_packed(pack_ct(q), scales.half(), fmt="compressed-tensors", in_features=256)
    kernel = W4A8Linear.from_packed(ref.qweight, ref.scales, fmt="kernel", in_features=256)
    x = torch.randn(3, 256, dtype=torch.bfloat16, device=device)
    # the formats store fp16 scales: compare those two exactly, the fp32 ones within fp16 rounding
    assert torch.equal(awq.to(device)(x), ct.to(device)(x))
    assert torch.equal(ref.to(device)(x), kernel.to(device)(x))
    torch.testing.assert_close(awq(x).float(), ref(x).float(), rtol=2e-2, atol=1e-2)


def test_state_dict_round_trip_through_meta(device):
    layer = W4A8Linear.from_float(nn.Linear(256, 64, bias=True), 128)
    with torch.device("meta"):
        empty = W4A8Linear(256, 64, 128, bias=True, bias_dtype=torch.float32)
    empty.load_state_dict(layer.state_dict(), assign=True)
    x = torch.randn(2, 256, device=device)
    assert torch.equal(empty.to(device)(x), layer.to(device)(x))


def test_unsupported_shapes_are_named():
    with pytest.raises(ValueError, match="K=200 is not a multiple of group_size=128"):
        W4A8Linear(200, 64, 128)
    with pytest.raises(ValueError, match="out_features N=60 must be a multiple of 8"):
        W4A8Linear.from_float(nn.Linear(128, 60), -1)
    with pytest.raises(ValueError, match="fmt must be one of"):
        W4A8Linear.from_packed(torch.zeros(8, 8), torch.ones(1, 8), fmt="gptq", in_features=64)
    with pytest.raises(ValueError, match="in_features=128"):
        W4A8Linear(128, 64)(torch.randn(2, 64))


def test_cpu_without_interpreter_falls_back_to_torch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    layer = W4A8Linear.from_float(nn.Linear(128, 64), -1)
    with pytest.warns(UserWarning, match="torch path"):
        y = layer(torch.randn(2, 128))
    assert y.shape == (2, 64) and layer.use_triton is False


@pytest.mark.parametrize("use_triton", [True, False])
def test_zero_points_match_the_asymmetric_contract(device, use_triton):
    """AutoAWQ-style W = (q - z) * s: the kernel runs q - 8, the zeros enter as a correction."""
    n, k, group = 64, 256, 128
    stored = torch.randint(0, 16, (n, k), dtype=torch.int16)
    zero = torch.randint(0, 16, (n, k // group), dtype=torch.int16)
    scales = torch.rand(n, k // group) / 50
    bias = torch.randn(n, dtype=torch.bfloat16)
    layer = W4A8Linear(k, n, group, bias=True, use_triton=use_triton, zero_points=True)
    layer.qweight.copy_(pack_w4a8((stored - 8).to(torch.int8), group))
    layer.scales.copy_(scales.t())
    layer.zeros.copy_(((zero - 8) * scales).t())
    layer.bias.copy_(bias)
    x = torch.randn(5, k, dtype=torch.bfloat16)
    effective_q = stored - zero.repeat_interleave(group, dim=1)  # [-15, 15]
    ref = w4a8_linear_ref(x, effective_q, scales, bias)
    assert_matches_contract(layer.to(device)(x.to(device)), ref.to(device))


@pytest.mark.parametrize("use_triton", [True, False])
def test_w8a8_linear(device, use_triton):
    from kernels import W8A8Linear, per_token_quant_int8_ref, w8a8_gemm_ref

    layer = W8A8Linear(256, 128, bias=True, use_triton=use_triton)
    layer.weight.copy_(torch.randint(-127, 128, (128, 256), dtype=torch.int8))
    layer.weight_scale.copy_(torch.rand(128) / 100)
    layer.bias.copy_(torch.randn(128))
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    x_q, x_scale = per_token_quant_int8_ref(x)
    ref = w8a8_gemm_ref(x_q, x_scale, layer.weight, layer.weight_scale, layer.bias)
    assert_matches_contract(layer.to(device)(x.to(device)), ref.to(device))


@pytest.mark.parametrize("group_size,bias", [(-1, True), (128, False)])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_decode_plan_matches_the_checked_path(device, group_size, bias, m):
    """Decode-sized M runs through a per-layer DecodePlan (kernels launched directly after the
    first call on a GPU): the same bits as `w4a8_gemm`, on the first call and on later ones."""
    linear = nn.Linear(512, 256, bias=bias).to(torch.bfloat16)
    layer = W4A8Linear.from_float(linear, group_size).to(device)
    x = torch.randn(m, 512, dtype=torch.bfloat16, device=device)
    want = w4a8_gemm(x, layer.qweight, layer.scales, group_size, layer.bias)
    q, scales = quantize_weight(linear.weight, group_size)
    assert_matches_contract(want, w4a8_linear_ref(x.cpu(), q, scales, linear.bias).to(device))
    for _ in range(3):
        assert torch.equal(layer(x), want)
    plan = layer._plans[(m, torch.bfloat16)]
    if device == "cuda":  # the direct relaunch is on (see kernels/launch.py)
        assert plan.gemm[0].compiled is not None and plan.quant.compiled is not None  # [0]: no residual


def test_decode_plan_follows_new_buffers_and_strided_inputs(device):
    layer = W4A8Linear.from_float(nn.Linear(256, 128, bias=False), 64).to(device)
    x = torch.randn(2, 256, device=device)
    first = layer(x)
    other = W4A8Linear.from_float(nn.Linear(256, 128, bias=False), 64).to(device)
    layer.load_state_dict(other.state_dict(), assign=True)  # new buffer tensors: a new plan
    assert torch.equal(layer(x), other(x)) and not torch.equal(layer(x), first)
    wide = torch.randn(2, 512, device=device)
    strided = wide[:, ::2]  # stride (512, 2): not the plan's layout, takes w4a8_gemm
    assert torch.equal(layer(strided), layer(strided.contiguous()))
    copied = copy.deepcopy(layer)  # plans are not copied
    assert copied._plans == {} and torch.equal(copied(x), layer(x))
