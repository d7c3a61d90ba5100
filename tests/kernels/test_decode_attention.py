"""Split-KV decode attention against SDPA over the filled slots (interpreter on CPU, compiled on GPU)."""

import pytest
import torch

from kernels.decode_attention import decode_attention, decode_attention_fits, split_plan


def sdpa_reference(query, key, value, key_mask, slot: int, scale: float) -> torch.Tensor:
    """fp32 SDPA of each row's query over slots [0, slot] with the additive mask, as [B, 1, Hq, D]."""
    b, hq, _, d = query.shape
    g = hq // key.shape[1]
    k = key[:, :, : slot + 1].float().repeat_interleave(g, dim=1)
    v = value[:, :, : slot + 1].float().repeat_interleave(g, dim=1)
    mask = key_mask.reshape(b, 1, 1, -1)[..., : slot + 1].float()
    out = torch.nn.functional.scaled_dot_product_attention(query.float(), k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.parametrize("hq,hkv,d,length,slot", [(4, 2, 32, 256, 100), (8, 1, 64, 512, 300), (4, 4, 16, 256, 0)])
def test_matches_sdpa_and_reads_only_filled_slots(device, hq, hkv, d, length, slot):
    b, dtype = 2, torch.bfloat16
    query = torch.randn(b, 1, hq, d, dtype=dtype, device=device).transpose(1, 2)  # HF's strides
    key = torch.randn(b, hkv, length, d, dtype=dtype, device=device)
    value = torch.randn(b, hkv, length, d, dtype=dtype, device=device)
    # slots after `slot` hold NaN: reading any of them would poison the output
    key[:, :, slot + 1:] = float("nan")
    value[:, :, slot + 1:] = float("nan")
    key_mask = torch.zeros(b, 1, 1, length, dtype=dtype, device=device)
    if slot >= 8:
        key_mask[1, ..., :7] = torch.finfo(dtype).min  # row 1: a left-padded prompt
    scale = d ** -0.5
    got, head_absmax = decode_attention(query, key, value, key_mask, torch.tensor(slot, device=device), scale,
                                        absmax=True)
    assert torch.equal(head_absmax, got.float().abs().amax(-1).reshape(b, hq))  # o_proj's absmax partials
    want = sdpa_reference(query, key, value, key_mask, slot, scale)
    assert got.shape == (b, 1, hq, d) and got.dtype == dtype
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


def test_masked_slots_get_no_weight(device):
    """A key behind the mask must not count even with a huge score."""
    b, hq, hkv, d, length, slot = 1, 2, 1, 16, 256, 9
    query = torch.ones(b, hq, 1, d, device=device, dtype=torch.bfloat16)
    key = torch.zeros(b, hkv, length, d, device=device, dtype=torch.bfloat16)
    value = torch.zeros_like(key)
    key[0, 0, 3] = 50.0  # would take all the softmax mass
    value[0, 0, 3] = 1000.0
    value[0, 0, [0, 1, 2, 4, 5, 6, 7, 8, 9]] = 1.0
    key_mask = torch.zeros(b, 1, 1, length, dtype=torch.bfloat16, device=device)
    key_mask[..., 3] = torch.finfo(torch.bfloat16).min
    got = decode_attention(query, key, value, key_mask, torch.tensor(slot, device=device), 1.0)
    torch.testing.assert_close(got.float(), torch.ones_like(got, dtype=torch.float32))


def test_split_plan_covers_the_cache():
    for length in (256, 768, 4096, 40960):
        chunk, splits = split_plan(length)
        assert chunk * splits >= length and splits & (splits - 1) == 0 and chunk % 64 == 0
        assert splits <= 32


def test_rejects_more_than_one_query_token(device):
    q = torch.zeros(1, 2, 3, 16, device=device)
    kv = torch.zeros(1, 1, 256, 16, device=device)
    with pytest.raises(ValueError, match="one query token"):
        decode_attention(q, kv, kv, torch.zeros(1, 1, 1, 256, device=device), torch.tensor(0, device=device), 1.0)


def test_fits_names_the_shapes_it_takes():
    kv = torch.zeros(1, 2, 256, 128)
    assert decode_attention_fits(torch.zeros(1, 8, 1, 128), kv)
    assert not decode_attention_fits(torch.zeros(1, 8, 2, 128), kv)  # prefill: SDPA
    assert not decode_attention_fits(torch.zeros(1, 8, 1, 80), torch.zeros(1, 2, 256, 80))  # head_dim 80
    assert not decode_attention_fits(torch.zeros(1, 3, 1, 128), kv)  # 3 query heads over 2 K/V heads
