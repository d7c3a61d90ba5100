"""The dp4a GEMV (kernels/w4a8_gemv.py) that w4a8_gemm picks for 1-4 rows: the contract
reference over group sizes, split-K and padded K, row independence, unaligned int8 input.
On the CPU its `dp4a` is the interpreter's shift-and-multiply form; on a GPU, the PTX one."""

import pytest
import torch

from kernels import per_token_quant_int8, w4a8_gemm
from kernels.linear import W4A8Linear, attach_absmax, attached_int8
from kernels.w4a8_gemm import DecodePlan, candidate_configs, sm_count
from kernels.split_k import reduce_split_k
from kernels.w4a8_gemv import GEMV_MAX_M, is_gemv

from .test_w4a8_gemm import assert_matches_contract, make_problem


def gemv_configs_for(m, n, k, group_size, device):
    configs = [c for c in candidate_configs(m, n, k, group_size, sm_count(torch.device(device))) if is_gemv(c)]
    assert configs, "no GEMV candidate"
    return configs


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("group_size", [-1, 32, 128])
def test_gemv_matches_reference(device, m, group_size):
    x, packed, scales, bias, ref = make_problem(m, 96, 512, group_size, torch.bfloat16, device, bias=True)
    configs = gemv_configs_for(m, 96, 512, group_size, device)
    splits = {(c["SPLIT_K"], c["W_STAGES"]): c for c in configs}  # per split count (1 and several), both load paths
    assert len(splits) > 2
    for config in splits.values():
        assert_matches_contract(w4a8_gemm(x, packed, scales, group_size, bias, config=config), ref)


@pytest.mark.parametrize("m,group_size", [(1, 128), (4, -1)])
def test_pipelined_loads_give_the_same_bits(device, m, group_size):
    """W_STAGES only moves the loads (cp.async, steps ahead); the arithmetic is the same. The
    interpreter runs both alike (tl.range is range there): this has teeth on a GPU, and
    test_compile_check shows the pipelined build on the CPU."""
    x, packed, scales, bias, _ = make_problem(m, 64, 1024, group_size, torch.bfloat16, device, bias=True)
    configs = gemv_configs_for(m, 64, 1024, group_size, device)
    plain = [c for c in configs if c["W_STAGES"] == 1]
    assert len(plain) * 2 == len(configs)
    for config in plain[:: max(1, len(plain) // 3)]:
        pipelined = dict(config, W_STAGES=3)
        assert pipelined in configs
        assert torch.equal(w4a8_gemm(x, packed, scales, group_size, bias, config=config),
                           w4a8_gemm(x, packed, scales, group_size, bias, config=pipelined))


@pytest.mark.parametrize("k,group_size", [(96, 32), (40, -1), (320, 64)])
def test_gemv_padded_k(device, k, group_size):
    # K_pad > K: high-nibble words past K meet no activations and no scales
    x, packed, scales, _, ref = make_problem(3, 64, k, group_size, torch.bfloat16, device)
    config = gemv_configs_for(3, 64, k, group_size, device)[0]
    assert_matches_contract(w4a8_gemm(x, packed, scales, group_size, config=config), ref)


def test_gemv_rows_are_independent(device):
    """A row's output has the same bits alone and in a batch (greedy decoding of one prompt
    must not depend on its neighbours)."""
    x, packed, scales, _, _ = make_problem(GEMV_MAX_M, 128, 1024, 128, torch.bfloat16, device)
    batched = w4a8_gemm(x, packed, scales, 128, config=gemv_configs_for(GEMV_MAX_M, 128, 1024, 128, device)[0])
    alone = w4a8_gemm(x[1:2], packed, scales, 128, config=gemv_configs_for(1, 128, 1024, 128, device)[0])
    assert torch.equal(batched[1:2], alone)


def test_gemv_unaligned_int8_rows(device):
    # x_q rows 257 bytes apart: not whole int32 words, so the kernel's word view copies them first
    x, packed, scales, _, ref = make_problem(2, 64, 256, -1, torch.bfloat16, device)
    x_q, x_scale = per_token_quant_int8(x)
    wide = torch.zeros(2, 257, dtype=torch.int8, device=device)
    wide[:, :256] = x_q
    config = gemv_configs_for(2, 64, 256, -1, device)[0]
    y = w4a8_gemm(wide[:, :256], packed, scales, -1, x_scale=x_scale, config=config)
    assert_matches_contract(y, ref)


@pytest.mark.parametrize("m,group_size", [(1, 128), (3, -1)])
def test_decode_plan_launches_the_gemv(device, m, group_size):
    """W4A8Linear's decode plan (direct launches of the compiled kernel) with a GEMV config,
    from float input and from int8 input."""
    x, packed, scales, bias, ref = make_problem(m, 96, 512, group_size, torch.bfloat16, device, bias=True)
    config = next(c for c in gemv_configs_for(m, 96, 512, group_size, device) if c["SPLIT_K"] > 1)
    plan = DecodePlan(m, 512, torch.bfloat16, packed, scales, bias, group_size, config)
    assert plan.gemv and plan.accepts(x)
    assert_matches_contract(plan(x, packed, scales, bias), ref)
    x_q, x_scale = per_token_quant_int8(x)
    assert_matches_contract(plan.quantized(x_q, x_scale, packed, scales, bias), ref)
    nobias = DecodePlan(m, 512, torch.bfloat16, packed, scales, None, group_size, config)
    parts = nobias(x, packed, scales, None, partials=True)  # unsummed, for a consumer (qk_rope.py)
    summed = torch.empty(m, 96, dtype=torch.bfloat16, device=device)
    reduce_split_k(parts, None, summed)
    assert parts.shape == (config["SPLIT_K"], m, 96) and torch.equal(summed, nobias(x, packed, scales, None))


@pytest.mark.parametrize("m,group_size", [(1, 128), (3, -1)])
def test_gemv_quantizing_rows_as_it_loads_gives_the_int8_bits(device, m, group_size):
    """A GEMV plan fed float rows and their absmax partials (decode attention's per-head maxima,
    `attach_absmax`) quantizes them as it loads: the bits of the int8 path, split-K or not, with
    the residual added or not, for 3 uneven partials (a non-power-of-two count); and W4A8Linear
    takes the attached partials."""
    x, packed, scales, bias, _ = make_problem(m, 96, 512, group_size, torch.bfloat16, device, bias=True)
    absmax = torch.stack([part.float().abs().amax(1) for part in x.tensor_split([100, 300], dim=1)], dim=1)
    residual = (torch.randn(m, 96, device=device) * 8).to(torch.bfloat16)
    x_q, x_scale = per_token_quant_int8(x)
    configs = gemv_configs_for(m, 96, 512, group_size, device)
    for config in {c["SPLIT_K"] > 1: c for c in configs}.values():
        plan = DecodePlan(m, 512, torch.bfloat16, packed, scales, bias, group_size, config)
        for res in (None, residual):
            want = plan.quantized(x_q, x_scale, packed, scales, bias, res)
            assert torch.equal(plan.quantized(x, absmax.contiguous(), packed, scales, bias, res), want)
    layer = W4A8Linear(512, 96, group_size, bias=True, device=device)
    layer.qweight.copy_(packed), layer.scales.copy_(scales), layer.bias.copy_(bias)
    rows = x.clone().view(m, 1, 512)
    attach_absmax(rows, absmax)
    assert attached_int8(rows)[1] is absmax
    assert torch.equal(layer(rows), layer(x).view(m, 1, 96))
