"""The fast decode path: fused W4A8 layers, grouped experts, static KV cache, CUDA-graph steps.

On the CPU the fused kernels run under the Triton interpreter and the static-cache decoder runs
its steps eagerly (the same `step` function a graph captures); on a GPU the graph path itself is
checked against the unfused model by teacher forcing.
"""

import importlib

import pytest
import torch
import transformers

from adapters.fusion import FusedMLP, TritonRMSNorm, fuse_w4a8
from adapters.moe import FusedSparseMoE, W4A8Experts
from adapters.decode_step import DecodeStepAttention, DecodeStepLayer, _pending, summed_output
from adapters.static_decode import (DECODE_SLOT, PREFILL_LEN, StaticKVCache, _after_eos, _capturable, grouped_sdpa,
                                    static_generate)
from kernels import w4a8_moe
from kernels.linear import attached_int8
from kernels.pdl import pdl_enabled

from .test_adapters import FAMILIES

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
# transformers 5.x holds routed experts in one module, which the loader swaps for W4A8Experts
# (and fusion stacks for the grouped kernel); 4.x runs its own per-expert modules, left as they are.
FUSED_EXPERTS = int(transformers.__version__.split(".")[0]) >= 5


def load(family, path, device, use_triton=True, fuse=None):
    return importlib.import_module(f"adapters.{family}").load_model(str(path), device, use_triton, fuse=fuse)


def padded_prompt(vocab: int = 512):
    ids = torch.randint(0, vocab, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in row 1
    return ids, mask


def assert_greedy(reference, ids, mask, out, tol=0.02):
    """Every token `out` adds to the prompt `ids` is `reference`'s greedy choice given the tokens
    before it (teacher forcing: one forward over the whole sequence), up to `tol` of the largest
    logit. Token-for-token equality with HF `generate` would also compare summation orders: the
    tiny random models' top-2 bf16 logits are often 1 ulp apart (1.2266 vs 1.2188), and a
    different attention length or expert order flips them. A wrong cache slot, position or
    fused weight gives tokens far off the argmax."""
    n = ids.shape[1]
    full_mask = torch.cat([mask, torch.ones_like(out[:, n:])], dim=1)
    positions = (full_mask.cumsum(-1) - 1).clamp(min=0)  # what generate gives left-padded rows
    with torch.no_grad():
        logits = reference(input_ids=out, attention_mask=full_mask, position_ids=positions).logits.float()
    logits = logits[:, n - 1:-1]
    gap = logits.max(-1).values - logits.gather(-1, out[:, n:, None]).squeeze(-1)
    assert torch.equal(out[:, :n], ids)
    assert (gap <= tol * logits.abs().max()).all(), f"non-greedy tokens, logit gaps {gap.tolist()}"


@pytest.mark.parametrize("family", FAMILIES)
def test_static_cache_decoding_is_greedy(family, quant_dir):
    model = load(family, quant_dir(family), "cpu", use_triton=False, fuse=False)
    ids, mask = padded_prompt()
    out = static_generate(model, ids, 10, mask, use_graph=False)
    assert out.shape == (2, 6 + 10)
    assert_greedy(model, ids, mask, out)


def test_unpadded_prefill_attends_causally_over_the_prompt_slots_only():
    """The unpadded-prefill path (causal SDPA over slots [0, T), no mask) gives the masked path's
    output, whatever the cache holds past T."""
    torch.manual_seed(0)
    b, hq, hkv, t, length, d = 1, 8, 2, 7, 12, 16
    query = torch.randn(b, hq, t, d)
    key, value = torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)  # slots >= t: stale junk
    allowed = torch.arange(length)[None, :] <= torch.arange(t)[:, None]
    mask = torch.zeros(t, length).masked_fill_(~allowed, torch.finfo(torch.float32).min)[None, None]
    masked, _ = grouped_sdpa(None, query, key, value, mask, scaling=d ** -0.5)
    causal, _ = grouped_sdpa(None, query, key, value, mask, scaling=d ** -0.5, **{PREFILL_LEN: t})
    torch.testing.assert_close(causal, masked, rtol=1e-5, atol=1e-5)
    key[:, :, :t] += 1  # and the path reads the prompt's slots
    assert not torch.allclose(grouped_sdpa(None, query, key, value, mask, **{PREFILL_LEN: t})[0], causal)


@pytest.mark.parametrize("family", ["qwen3", "ernie4_5_moe"])
def test_unpadded_prompt_prefills_causally_and_decodes_greedy(family, quant_dir, monkeypatch):
    model = load(family, quant_dir(family), "cpu", use_triton=False, fuse=False)
    sdpa, causal_calls = torch.nn.functional.scaled_dot_product_attention, []
    def spy(*args, **kwargs):
        causal_calls.append(kwargs.get("is_causal", False))
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    ids = torch.randint(0, 512, (2, 6))
    out = static_generate(model, ids, 6, torch.ones_like(ids), use_graph=False)
    monkeypatch.undo()
    assert causal_calls[:model.config.num_hidden_layers] == [True] * model.config.num_hidden_layers  # the prefill
    assert not any(causal_calls[model.config.num_hidden_layers:])  # decode steps: the masked path
    assert_greedy(model, ids, torch.ones_like(ids), out)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_model_gives_the_unfused_logits_and_greedy_tokens(family, quant_dir, device):
    model = load(family, quant_dir(family), device, fuse=False)
    ids, mask = (t.to(device) for t in padded_prompt())
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        made = fuse_w4a8(model)
        fused_logits = model(input_ids=ids, attention_mask=mask).logits
    assert made["qkv"] == model.config.num_hidden_layers and made["norm"] >= made["qkv"]
    assert made["decode_step"] == (made["qkv"] if family.startswith("qwen3") else 0)
    # the decode-step layer where the MLP adds the residual: Qwen3, and Qwen3-MoE's FusedSparseMoE
    assert made["decode_layer"] == (made["qkv"] if family == "qwen3" or (family == "qwen3_moe" and FUSED_EXPERTS)
                                    else 0)
    moe = family.endswith("moe")
    if not moe:
        assert made["mlp"] == model.config.num_hidden_layers
    assert (made["experts"] > 0) == (moe and FUSED_EXPERTS)
    assert made["router"] == made["experts"]  # every stacked block routes in one kernel (FusedSparseMoE)
    if made["router"]:
        block = next(m for m in model.modules() if isinstance(m, FusedSparseMoE))
        assert isinstance(model.model.layers[0].post_attention_layernorm, TritonRMSNorm)
        assert block.experts.stacked is not None and (block.shared_experts is not None) == family.startswith("ernie")
    assert any(isinstance(m, TritonRMSNorm) for m in model.modules())
    if family.startswith("qwen3"):  # the per-head q/k norms run as one kernel each
        attn = model.model.layers[0].self_attn
        assert isinstance(attn.q_norm, TritonRMSNorm) and isinstance(attn.k_norm, TritonRMSNorm)
    assert any(isinstance(m, FusedMLP) for m in model.modules()) or family == "qwen3_moe"
    # Same int8 inputs and weights; on the CPU interpreter the bits agree exactly, on a GPU the
    # fused GEMM's tiles (and split-K) may sum in another order.
    err = ((fused_logits - logits).abs().max() / logits.abs().max()).item()
    assert err < (1e-6 if device == "cpu" else 1e-2), err
    reference = load(family, quant_dir(family), device, fuse=False)
    assert_greedy(reference, ids, mask, static_generate(model, ids, 5, mask, use_graph=False))


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_decode_step_attention_matches_transformers_forward(family, quant_dir, device):
    """The four-launch decode step of a fused Qwen3 attention layer gives transformers' output and
    writes the same K/V into the cache slot."""
    model = load(family, quant_dir(family), device, fuse=True)
    attn = model.model.layers[1].self_attn
    assert isinstance(attn, DecodeStepAttention)
    config = model.config
    b, slot = 2, 5
    hidden = torch.randn(b, 1, config.hidden_size, device=device, dtype=torch.bfloat16)
    position = torch.tensor([[5], [3]], device=device)
    position_embeddings = model.model.rotary_emb(hidden, position)
    mask = torch.zeros(b, 1, 1, 16, device=device, dtype=torch.bfloat16)
    mask[..., slot + 1:] = torch.finfo(torch.bfloat16).min
    mask[1, ..., :2] = torch.finfo(torch.bfloat16).min  # left padding in row 1
    caches = []
    for _ in range(2):
        cache = StaticKVCache(config.num_hidden_layers, b, config.num_key_value_heads, 16, attn.head_dim,
                              torch.bfloat16, torch.device(device))
        torch.manual_seed(0)
        for t in cache.keys + cache.values:
            t.copy_(torch.randn(t.shape))
        cache.slot.fill_(slot)
        caches.append(cache)
    with torch.no_grad():
        fast, _ = attn(hidden, position_embeddings, mask, caches[0], **{DECODE_SLOT: caches[0].slot})
        hf, _ = attn(hidden, position_embeddings, mask, caches[1])  # no slot kwarg: transformers' forward
    torch.testing.assert_close(fast.float(), hf.float(), rtol=2e-2, atol=2e-2 * hf.abs().max().item())
    fast_k, hf_k = caches[0].keys[1], caches[1].keys[1]
    torch.testing.assert_close(fast_k.float(), hf_k.float(), rtol=2**-7, atol=2**-7)
    assert torch.equal(caches[0].values[1], caches[1].values[1])
    assert torch.equal(caches[0].keys[0], caches[1].keys[0]), "layer 1 wrote layer 0's cache"
    if not isinstance(model.model.layers[1], DecodeStepLayer):
        assert family == "qwen3_moe" and not FUSED_EXPERTS  # 4.x experts: transformers' own MoE block
        return
    # The decoder layer's decode step: its two residual adds in o_proj's GEMM and in the MLP's last
    # launch give the bits of transformers' layer forward over the same modules.
    layer = model.model.layers[1]
    hf_layer_forward = type(layer).__mro__[2].forward  # (subclass, DecodeStepLayer, transformers' layer)
    kwargs = dict(attention_mask=mask, position_embeddings=position_embeddings, position_ids=position)
    outs = []
    for forward in (layer.forward, lambda *a, **kw: hf_layer_forward(layer, *a, **kw)):
        cache = caches[0]
        with torch.no_grad():
            outs.append(forward(hidden, cache=cache, **kwargs, **{DECODE_SLOT: cache.slot}))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], hidden)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_deferred_layer_output_gives_the_summed_bits(family, quant_dir, device):
    """A decode-step layer that leaves its MLP's output unsummed (split-K partials, or the MoE
    block's slot outputs) for the next layer's input norm gives the next layer the bits it gets
    from the summed output; the last layer's output stays a tensor."""
    model = load(family, quant_dir(family), device, fuse=True)
    layers = model.model.layers
    if not isinstance(layers[0], DecodeStepLayer):
        assert family == "qwen3_moe" and not FUSED_EXPERTS  # 4.x experts: transformers' own MoE block
        return
    assert [layer.defers_output for layer in layers] == [True] * (len(layers) - 1) + [False]
    config, attn = model.config, layers[0].self_attn
    b, slot = 2, 5
    hidden = torch.randn(b, 1, config.hidden_size, device=device, dtype=torch.bfloat16)
    position = torch.tensor([[5], [3]], device=device)
    kwargs = dict(attention_mask=torch.zeros(b, 1, 1, 16, device=device, dtype=torch.bfloat16),
                  position_embeddings=model.model.rotary_emb(hidden, position), position_ids=position)
    cache = StaticKVCache(config.num_hidden_layers, b, config.num_key_value_heads, 16, attn.head_dim,
                          torch.bfloat16, torch.device(device))
    cache.slot.fill_(slot)
    outs = []
    for defer in (True, False):
        layers[0].defers_output = defer
        with torch.no_grad():
            first = layers[0](hidden, cache=cache, **kwargs, **{DECODE_SLOT: cache.slot})
            assert (_pending(first) is not None) == defer
            outs.append((summed_output(first), layers[1](first, cache=cache, **kwargs, **{DECODE_SLOT: cache.slot})))
    (deferred, deferred_next), (summed, summed_next) = outs
    assert torch.equal(deferred_next, summed_next)
    # the torch sum (`summed_output`, for a consumer that is not a decode-step layer) rounds as the
    # GPU does; the interpreter's fp32 -> bf16 casts in the GEMM's epilogue truncate, twice (the sum,
    # then + residual): up to 2 ulp apart
    torch.testing.assert_close(deferred, summed, rtol=2**-6, atol=0)
    assert not torch.equal(summed_next, summed)


@pytest.mark.skipif(not FUSED_EXPERTS, reason="transformers 4.x runs experts as its own per-expert modules: "
                    "no W4A8Experts to group")
# 2 tokens: the expert GEMVs (SiLU-mul in gate/up's epilogue); 16: the down GEMV summing the slots (int8
# rows from silu_mul_quant); 65 (130 slots): routed tiles
@pytest.mark.parametrize("tokens", [2, 16, 65])
def test_grouped_experts_match_the_expert_loop(quant_dir, device, tokens):
    model = load("qwen3_moe", quant_dir("qwen3_moe"), device, fuse=False)
    experts = next(m for m in model.modules() if isinstance(m, W4A8Experts))
    k = model.config.num_experts_per_tok
    assert (tokens * k <= w4a8_moe.GEMV_MAX_SLOTS) == (tokens < 65)
    assert (tokens >= w4a8_moe.GEMV_SUM_MIN_TOKENS) == (tokens >= 16)
    hidden = torch.randn(tokens, model.config.hidden_size, device=device, dtype=torch.bfloat16)
    top_k_index = torch.randint(0, len(experts), (tokens, k), device=device)
    top_k_index[0] = torch.arange(top_k_index.shape[1])  # several tokens on one expert, some experts idle
    top_k_index[1] = top_k_index[0]
    weights = torch.rand(top_k_index.shape, device=device).softmax(-1)
    with torch.no_grad():
        loop = experts(hidden, top_k_index, weights)
        state = {k: v.clone() for k, v in experts.state_dict().items()}
        assert experts.stack()
        grouped = experts(hidden, top_k_index, weights)
    assert all(torch.equal(v, state[k]) for k, v in experts.state_dict().items()), "stacking changed the weights"
    assert torch.allclose(grouped.float(), loop.float(), rtol=2e-2, atol=2e-2 * loop.abs().max().item())


def test_int8_handoff_is_dropped_after_an_in_place_change(quant_dir, device):
    model = load("qwen3", quant_dir("qwen3"), device, fuse=True)
    layer = model.model.layers[0]
    x = torch.randn(3, model.config.hidden_size, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        y = layer.input_layernorm(x)  # TritonRMSNorm(quantize=True): y carries its int8 quantization
        assert attached_int8(y) is not None
        y.mul_(-2)
        assert attached_int8(y) is None
        qkv = layer.self_attn.qkv.linear
        assert torch.equal(qkv(y), qkv(y.clone()))  # quantized afresh, not from the stale int8


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_capture_is_refused_where_experts_sync_with_the_host(family, quant_dir, device):
    model = load(family, quant_dir(family), device, fuse=False)
    if not family.endswith("moe"):
        assert _capturable(model)
        return
    with pytest.warns(UserWarning, match="host-synchronized loop"):
        assert not _capturable(model)
    fuse_w4a8(model)  # stacks W4A8Experts (5.x); 4.x's per-expert modules stay a loop
    if FUSED_EXPERTS:
        assert _capturable(model)
    else:
        with pytest.warns(UserWarning, match="host-synchronized loop"):
            assert not _capturable(model)


def test_after_eos_pads_and_cuts_like_generate():
    eos, pad = torch.tensor([2]), 0
    new = torch.tensor([[5, 2, 7, 8, 9], [6, 6, 6, 2, 3]])
    assert _after_eos(new, eos, pad).tolist() == [[5, 2, 0, 0], [6, 6, 6, 2]]
    open_row = torch.tensor([[5, 2, 7], [6, 6, 6]])
    assert _after_eos(open_row, eos, pad).tolist() == [[5, 2, 0], [6, 6, 6]]


@gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graph_decoding_is_greedy_and_replays_the_same(family, quant_dir):
    ids, mask = (t.cuda() for t in padded_prompt())
    model = load(family, quant_dir(family), "cuda")  # fused by default on CUDA
    adapter = importlib.import_module(f"adapters.{family}")
    first = static_generate(model, ids, 12, mask, use_graph=True)
    if FUSED_EXPERTS or not family.endswith("moe"):  # 4.x experts sync with the host: no graph
        assert model._static_decoder.graph is not None, "the decode step was not captured"
    assert_greedy(load(family, quant_dir(family), "cuda", fuse=False), ids, mask, first)
    assert torch.equal(static_generate(model, ids, 12, mask, use_graph=True), first), "graph replay differs"
    assert adapter.generate(model, ids[:1], 12).shape[1] <= 6 + 12


@gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_dependent_launches_change_no_token(family, quant_dir, monkeypatch):
    """The decode step's kernels launched with programmatic dependent launch (kernels/pdl.py: each
    scheduled while the one before runs, waiting for it before touching memory) decode the tokens
    of the same kernels launched one after the other; a kernel that read before its wait would
    race, and its tokens would move."""
    if not pdl_enabled(torch.device("cuda")):
        pytest.skip("dependent launch needs compute capability 9.0 (Hopper) or later, and WB_PDL unset")
    ids, mask = (t.cuda() for t in padded_prompt())
    tokens = []
    for setting in ("1", "0"):
        monkeypatch.setenv("WB_PDL", setting)
        tokens.append(static_generate(load(family, quant_dir(family), "cuda"), ids, 12, mask, use_graph=True))
    assert torch.equal(tokens[0], tokens[1])


def test_decode_benchmark_smoke_run():
    from adapters import decode_benchmark

    rows = decode_benchmark.main(["--tiny", "--device", "cpu", "--batches", "1", "--variants", "w4a8-graph,bf16",
                                  "--prompt-tokens", "4"])
    got = {(r["model"], r["variant"]) for r in rows}
    variants = ("w4a8-graph", "bf16", "floor (w4a8)", "floor (bf16)", "w4a8 first token (4-token prompt)",
                "bf16 first token (4-token prompt)")
    assert got == {(m, v) for m in ("qwen3", "qwen3_moe") for v in variants}
    assert all(r["tok_s"] > 0 and r["seconds"] > 0 for r in rows)
