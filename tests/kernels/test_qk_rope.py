"""qk_norm_rope_store (one launch for Qwen3's q/k norms, rotary embedding and cache write)
against transformers' steps."""

import pytest
import torch

from kernels.qk_rope import qk_norm_rope_ref, qk_norm_rope_store
from kernels.split_k import reduce_split_k


def rotary(b, d, positions):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = positions[:, None].float() * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (2, 2)])
def test_matches_transformers_steps(device, heads, kv_heads):
    b, d, length, slot = 3, 32, 16, 5
    qkv = torch.randn(b, (heads + 2 * kv_heads) * d).to(torch.bfloat16) * 3
    q_w, k_w = (torch.rand(d) + 0.5).to(torch.bfloat16), (torch.rand(d) + 0.5).to(torch.bfloat16)
    cos, sin = rotary(b, d, torch.tensor([7, 100, 2]))
    q_ref, k_ref, v_ref = qk_norm_rope_ref(qkv, q_w, k_w, 1e-6, cos, sin, heads, kv_heads)
    to = lambda t: t.to(device)  # noqa: E731
    k_cache = torch.full((b, kv_heads, length, d), float("nan"), dtype=torch.bfloat16, device=device)
    v_cache = k_cache.clone()
    q = qk_norm_rope_store(to(qkv), to(q_w), to(k_w), 1e-6, to(cos), to(sin), k_cache, v_cache,
                           torch.tensor(slot, device=device), heads, kv_heads)
    # one bf16 ulp: the norm's fp32 sum may be ordered differently from torch's mean
    torch.testing.assert_close(q.cpu(), q_ref, rtol=2**-7, atol=2**-7)
    torch.testing.assert_close(k_cache[:, :, slot:slot + 1].cpu(), k_ref, rtol=2**-7, atol=2**-7)
    assert torch.equal(v_cache[:, :, slot:slot + 1].cpu(), v_ref)
    others = torch.ones(length, dtype=torch.bool)
    others[slot] = False
    assert k_cache[:, :, others].isnan().all() and v_cache[:, :, others].isnan().all(), "wrote outside the slot"


def test_bad_shapes_are_named(device):
    qkv = torch.zeros(2, 8 * 32, dtype=torch.bfloat16, device=device)
    cache = torch.zeros(2, 2, 4, 32, dtype=torch.bfloat16, device=device)
    w = torch.ones(32, dtype=torch.bfloat16, device=device)
    cos = torch.ones(2, 32, dtype=torch.bfloat16, device=device)
    slot = torch.tensor(0, device=device)
    with pytest.raises(ValueError, match=r"qkv must be \[B, \(heads \+ 2 kv_heads\) \* head_dim\] = \[B, 256\]"):
        qk_norm_rope_store(qkv[:, :200], w, w, 1e-6, cos, cos, cache, cache, slot, 4, 2)
    with pytest.raises(ValueError, match=r"cos/sin must be \[B, head_dim\] = \[2, 32\]"):
        qk_norm_rope_store(qkv, w, w, 1e-6, cos[:, :16], cos[:, :16], cache, cache, slot, 4, 2)


def test_split_k_partials_are_summed_as_the_reduction_sums_them(device):
    """qkv given as the GEMV's fp32 split-K partials (the decode step skips the reduction's launch):
    the same query, key and value bits as the reduced qkv."""
    b, d, heads, kv_heads, length, slot = 2, 32, 4, 2, 8, 3
    parts = torch.randn(3, b, (heads + 2 * kv_heads) * d, device=device) * 2
    qkv = torch.empty(b, parts.shape[2], dtype=torch.bfloat16, device=device)
    reduce_split_k(parts, None, qkv)
    w = (torch.rand(d, device=device) + 0.5).to(torch.bfloat16)
    cos, sin = (t.to(device) for t in rotary(b, d, torch.tensor([4, 9])))
    results = []
    for given in (qkv, parts):
        caches = [torch.zeros(b, kv_heads, length, d, dtype=torch.bfloat16, device=device) for _ in range(2)]
        q = qk_norm_rope_store(given, w, w, 1e-6, cos, sin, *caches, torch.tensor(slot, device=device), heads, kv_heads)
        results.append((q, *caches))
    assert all(torch.equal(x, y) for x, y in zip(*results))
    with pytest.raises(ValueError, match="partials must be fp32"):
        qk_norm_rope_store(parts.to(torch.bfloat16), w, w, 1e-6, cos, sin, *caches, torch.tensor(0, device=device),
                           heads, kv_heads)
