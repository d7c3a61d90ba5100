"""int4 packing: round trips for all three layouts, checked against the documented byte layouts."""

import pytest
import torch

from kernels.packing import (AWQ_ORDER, pack_awq, pack_ct, pack_nibbles_awq, pack_w4a8, padded_k, repack_awq,
                             repack_ct, unpack_awq, unpack_ct, unpack_nibbles_awq, unpack_w4a8)
from kernels.reference import quantize_weight


def rand_int4(n: int, k: int) -> torch.Tensor:
    return torch.randint(-8, 8, (n, k), dtype=torch.int8)


@pytest.mark.parametrize("n,k", [(8, 8), (128, 384), (24, 40)])
def test_awq_round_trip(n, k):
    q = rand_int4(n, k)
    qweight = pack_awq(q)
    assert qweight.dtype == torch.int32 and qweight.shape == (k, n // 8)
    assert torch.equal(unpack_awq(qweight), q)


def test_awq_byte_layout_matches_reference():
    # REFERENCE.md: nibble i (bits 4i..4i+3) of word c holds column 8c + [0,2,4,6,1,3,5,7][i];
    # values stored q + 8. Column j of one row holds value j - 8 here, so stored nibble = j.
    q = (torch.arange(16) - 8).to(torch.int8)[None, :].t().contiguous()  # [N=16, K=1]
    word0, word1 = pack_awq(q)[0].tolist()
    for i, col in enumerate(AWQ_ORDER):
        assert (word0 >> (4 * i)) & 0xF == col
        assert ((word1 & 0xFFFFFFFF) >> (4 * i)) & 0xF == 8 + col
    # reading column j uses shift 4 * [0,4,1,5,2,6,3,7][j]
    for j, shift in enumerate([0, 4, 1, 5, 2, 6, 3, 7]):
        assert (word0 >> (4 * shift)) & 0xF == j


def test_awq_nibbles_hold_qzeros_layout():
    zeros = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    assert torch.equal(unpack_nibbles_awq(pack_nibbles_awq(zeros)), zeros)


def test_awq_asymmetric_unpack_subtracts_zero_points():
    stored = torch.randint(0, 16, (32, 16), dtype=torch.uint8)  # [K, N]
    zeros = torch.randint(0, 16, (32, 16), dtype=torch.int16)
    q = unpack_awq(pack_nibbles_awq(stored), zeros)
    assert torch.equal(q, (stored.to(torch.int16) - zeros).t())


@pytest.mark.parametrize("n,k", [(8, 8), (128, 384), (16, 20)])
def test_ct_round_trip(n, k):
    q = rand_int4(n, k)
    packed = pack_ct(q)
    assert packed.dtype == torch.int32 and packed.shape == (n, -(-k // 8))
    assert torch.equal(unpack_ct(packed, k), q)


def test_ct_byte_layout_matches_reference():
    # REFERENCE.md: element k at bits 4*(k % 8) of word k // 8, stored as q + 8.
    q = (torch.arange(16) - 8).to(torch.int8)[None, :]  # [N=1, K=16]
    words = pack_ct(q)[0].tolist()
    for k in range(16):
        assert ((words[k // 8] & 0xFFFFFFFF) >> (4 * (k % 8))) & 0xF == k


@pytest.mark.parametrize("n,k,group_size", [(8, 64, -1), (128, 384, -1), (16, 96, 32), (32, 384, 128), (8, 40, -1)])
def test_kernel_layout_round_trip(n, k, group_size):
    q = rand_int4(n, k)
    packed = pack_w4a8(q, group_size)
    assert packed.dtype == torch.int8 and packed.shape == (n, padded_k(k, group_size) // 2)
    assert torch.equal(unpack_w4a8(packed, k), q)


def test_kernel_layout_pairs_first_and_second_half_of_k():
    q = rand_int4(8, 128)
    byte = pack_w4a8(q).to(torch.int16) & 0xFF
    lo, hi = byte & 0xF, byte >> 4
    assert torch.equal(lo, q[:, :64].to(torch.int16) & 0xF)
    assert torch.equal(hi, q[:, 64:].to(torch.int16) & 0xF)


def test_padded_k_puts_the_high_half_on_a_group_boundary():
    assert padded_k(384) == 384 and padded_k(40) == 64
    assert padded_k(384, 128) == 512 and padded_k(256, 128) == 256 and padded_k(96, 32) == 128


@pytest.mark.parametrize("group_size", [-1, 32, 128])
def test_repack_from_both_formats_gives_the_same_kernel_tensors(group_size):
    w = torch.randn(64, 256)
    q, scales = quantize_weight(w, group_size)  # scales [N, G]
    from_awq = repack_awq(pack_awq(q), scales.t().to(torch.float16))
    from_ct = repack_ct(pack_ct(q), scales.to(torch.float16), (64, 256))
    assert torch.equal(from_awq[0], pack_w4a8(q, group_size)) and torch.equal(from_awq[0], from_ct[0])
    assert torch.equal(from_awq[1], from_ct[1]) and from_awq[1].shape == (scales.shape[1], 64)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_w4a8(torch.full((8, 8), 9, dtype=torch.int8))
    with pytest.raises(ValueError, match="divisible by 8"):
        pack_awq(rand_int4(12, 8))
    with pytest.raises(ValueError, match="K=100"):
        unpack_ct(pack_ct(rand_int4(8, 64)), 100)
    with pytest.raises(ValueError, match="weight_shape"):
        repack_ct(pack_ct(rand_int4(8, 64)), torch.ones(16, 1), (16, 64))
