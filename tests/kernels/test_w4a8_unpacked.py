"""The prefill path of the W4A8 GEMM (kernels/w4a8_unpacked.py): unpack to int8, then the int8
GEMM, against the fp64 contract reference and the fused kernel, per channel and per group, with
K padding, bias and residual; and the autotuner's view of it (candidates from M = 256 on)."""

import pytest
import torch

from kernels import per_token_quant_int8, w4a8_gemm
from kernels.packing import padded_k
from kernels.w4a8_gemm import candidate_configs
from kernels.w4a8_unpacked import UNPACK_MIN_M, is_unpacked, unpack_int4, unpacked_configs

from .test_w4a8_gemm import assert_matches_contract, make_problem


@pytest.mark.parametrize("k,group_size", [(384, 128), (96, 32), (200, -1)])
def test_unpack_gives_sixteen_times_the_int4_values_in_natural_k_order(device, k, group_size):
    from kernels import pack_w4a8

    q = torch.randint(-8, 8, (40, k), dtype=torch.int8)
    packed = pack_w4a8(q, group_size).to(device)
    unpacked = unpack_int4(packed).cpu()
    assert unpacked.shape == (40, padded_k(k, group_size))
    # 16 q: each nibble in the high half of its byte (w4a8_unpacked.sixteen_nibbles); padding unpacks to zeros
    assert torch.equal(unpacked[:, :k], q * 16) and not unpacked[:, k:].any()


@pytest.mark.parametrize("group_size,k", [(128, 384), (64, 320), (-1, 200)])
def test_every_unpacked_config_matches_the_contract(device, group_size, k):
    """K = 3 groups of 128 (K_pad 512: a padded group), 5 of 64, 200 per channel (not a multiple
    of any BLOCK_K); M and N not multiples of any tile; bias, residual, and int8 input."""
    m, n = 130, 96
    x, packed, scales, bias, ref = make_problem(m, n, k, group_size, torch.bfloat16, device, bias=True)
    configs = unpacked_configs(group_size)
    residual = (torch.randn(m, n, device=device) * 4).to(torch.bfloat16)
    for config in configs if device == "cuda" else configs[:2]:
        y = w4a8_gemm(x, packed, scales, group_size, bias, config=config)
        assert_matches_contract(y, ref)
        with_residual = w4a8_gemm(x, packed, scales, group_size, bias, config=config, residual=residual)
        assert torch.equal(with_residual, residual + y)  # as torch adds it
    x_q, x_scale = per_token_quant_int8(x)
    fused = w4a8_gemm(x_q, packed, scales, group_size, bias, x_scale=x_scale, config=candidate_configs(
        m, n, k, group_size, 4)[0])
    unpacked = w4a8_gemm(x_q, packed, scales, group_size, bias, x_scale=x_scale, config=configs[0])
    if group_size == -1:  # int32 sums are exact in any order: the same bits as the fused kernel
        assert torch.equal(unpacked, fused)
    else:
        assert_matches_contract(unpacked, fused)


def test_per_group_blocks_stay_within_a_group():
    for group_size in (32, 64, 128):
        assert all(c["BLOCK_K"] <= group_size for c in unpacked_configs(group_size))
    assert max(c["BLOCK_K"] for c in unpacked_configs(-1)) == 128


def test_the_autotuner_times_the_unpacked_path_from_m_256_with_the_fused_tile_first():
    below = candidate_configs(UNPACK_MIN_M - 1, 4096, 4096, 128, 132)
    at = candidate_configs(UNPACK_MIN_M, 4096, 4096, 128, 132)
    assert not any(is_unpacked(c) for c in below)
    assert [c for c in at if is_unpacked(c)] == unpacked_configs(128)
    assert not is_unpacked(at[0])  # untuned (the interpreter, WB_AUTOTUNE=0): the fused tile
