"""One-kernel MoE routing against transformers' routers and the torch reference; router weights
applied in the expert kernels' epilogue against torch's product."""

import pytest
import torch
from transformers import Ernie4_5_MoeConfig, Qwen3MoeConfig
from transformers.models.ernie4_5_moe import modeling_ernie4_5_moe as ernie_moe
from transformers.models.qwen3_moe import modeling_qwen3_moe as qwen3_moe

from kernels.act_quant import per_token_quant_int8
from kernels.moe_routing import ROUTER_MAX_TOKENS, route, topk_softmax, topk_softmax_ref
from kernels.packing import pack_w4a8, scales_to_kernel
from kernels.reference import quantize_weight
from kernels.fused_act import silu_mul_quant
from kernels.w4a8_moe import (route_by_expert, sum_slots, w4a8_moe_gemm, w4a8_moe_gemv, w4a8_moe_gemv_glu,
                              w4a8_moe_gemv_sum)

HAS_ROUTER_CLASSES = hasattr(qwen3_moe, "Qwen3MoeTopKRouter") and hasattr(ernie_moe, "Ernie4_5_MoeTopKRouter")


@pytest.mark.parametrize("tokens,experts,top_k,renormalize", [(1, 128, 8, True), (7, 64, 6, True), (3, 10, 3, False)])
def test_topk_softmax_equals_the_torch_routing(device, tokens, experts, top_k, renormalize):
    logits = (torch.randn(tokens, experts, device=device) * 2).to(torch.bfloat16)
    weights, ids = topk_softmax(logits, top_k, renormalize, torch.bfloat16)
    want_weights, want_ids = topk_softmax_ref(logits, top_k, renormalize, torch.bfloat16)
    assert ids.dtype == torch.int32 and weights.shape == (tokens, top_k)
    assert torch.equal(ids, want_ids)  # highest first, as torch.topk orders them
    torch.testing.assert_close(weights.float(), want_weights.float(), rtol=2**-8, atol=0)
    if renormalize:
        torch.testing.assert_close(weights.float().sum(-1), torch.ones(tokens, device=device), rtol=0, atol=0.02)


def test_the_bias_steers_the_choice_and_not_the_weights(device):
    """Ernie's e_score_correction_bias: a large bias on expert 5 makes it chosen first, with its
    unbiased probability as its weight."""
    logits = torch.randn(4, 16, device=device)
    bias = torch.zeros(16, device=device)
    bias[5] = 10.0
    weights, ids = topk_softmax(logits, 4, True, torch.float32, bias, norm_min=1e-12)
    want_weights, want_ids = topk_softmax_ref(logits, 4, True, torch.float32, bias, norm_min=1e-12)
    assert (ids[:, 0] == 5).all() and torch.equal(ids, want_ids)
    torch.testing.assert_close(weights, want_weights, rtol=1e-5, atol=1e-7)
    floor = topk_softmax(torch.full((1, 16), -30.0, device=device), 2, True, torch.float32, norm_min=0.5)[0]
    torch.testing.assert_close(floor, torch.full((1, 2), 1 / 16 / 0.5, device=device))  # sum 1/8 < norm_min


def test_ties_go_to_the_lowest_expert(device):
    logits = torch.zeros(2, 8, device=device)
    logits[1, [6, 2]] = 1.0
    _, ids = topk_softmax(logits, 3, False, torch.float32)
    assert ids.tolist() == [[0, 1, 2], [2, 6, 0]]


def test_bad_routing_input_is_named(device):
    with pytest.raises(ValueError, match="top_k=9 of 8 experts"):
        topk_softmax(torch.zeros(1, 8, device=device), 9, True, torch.float32)
    with pytest.raises(ValueError, match="bias has 4 entries for 8 experts"):
        topk_softmax(torch.zeros(1, 8, device=device), 2, True, torch.float32, torch.zeros(4, device=device))


@pytest.mark.skipif(not HAS_ROUTER_CLASSES, reason="transformers 4.x has no TopKRouter modules")
@pytest.mark.parametrize("family", ["qwen3_moe", "ernie4_5_moe"])
def test_topk_softmax_gives_the_transformers_router_outputs(device, family):
    """The values FusedSparseMoE.route computes (the Triton router GEMV at 5 tokens), against the
    router module transformers runs."""
    torch.manual_seed(0)
    if family == "qwen3_moe":
        config = Qwen3MoeConfig(hidden_size=64, num_experts=32, num_experts_per_tok=4, norm_topk_prob=True)
        router = qwen3_moe.Qwen3MoeTopKRouter(config).to(device, torch.bfloat16)
    else:
        config = Ernie4_5_MoeConfig(hidden_size=64, moe_num_experts=32, moe_k=4)
        router = ernie_moe.Ernie4_5_MoeTopKRouter(config).to(device)
        router.moe_statics.e_score_correction_bias.data.normal_(0, 0.05)
    router.weight.data.normal_(0, 0.3)
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        _, want_weights, want_ids = router(x)
        if family == "qwen3_moe":
            weights, ids = route(x, router.weight, router.top_k, router.norm_topk_prob, x.dtype)
        else:
            weights, ids = route(x, router.weight, router.top_k, True, x.dtype,
                                 router.moe_statics.e_score_correction_bias, router.norm_min)
    assert torch.equal(ids.long(), want_ids)
    assert weights.dtype == want_weights.dtype
    torch.testing.assert_close(weights.float(), want_weights.float(), rtol=2**-8, atol=0)


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
def test_router_weights_in_the_epilogue_give_torchs_product(device, kernel):
    """slot_weights: each slot's output times its weight, rounded once to bf16, bit for bit what
    `y * top_k_weights` gives in torch (on the GPU too: same fp32 product, same rounding)."""
    torch.manual_seed(0)
    experts, n, k, tokens, top_k = 4, 64, 128, 2, 3
    quantized = [quantize_weight(torch.randn(n, k, device=device), 64) for _ in range(experts)]
    packed = torch.stack([pack_w4a8(q, 64) for q, _ in quantized])
    scales = torch.stack([scales_to_kernel(s) for _, s in quantized])
    x_q, x_scale = per_token_quant_int8(torch.randn(tokens * top_k, k, device=device))
    ids = torch.randint(0, experts, (tokens, top_k), device=device, dtype=torch.int32)
    weights = torch.rand(tokens, top_k, device=device).to(torch.bfloat16)
    if kernel == "gemv":
        run = lambda w: w4a8_moe_gemv(x_q, x_scale, packed, scales, ids, 64, 1, torch.bfloat16, w)  # noqa: E731
    else:
        routing = route_by_expert(ids, experts)
        run = lambda w: w4a8_moe_gemm(x_q, x_scale, packed, scales, routing, 64, 1, torch.bfloat16, w)  # noqa: E731
    plain, weighted = run(None), run(weights)
    assert torch.equal(weighted, plain * weights.reshape(-1, 1))
    with pytest.raises(ValueError, match="slot_weights has 5 entries for 6"):
        run(weights.reshape(-1)[:5])


def test_sum_slots_adds_each_tokens_rows_as_torch_does(device):
    y = (torch.randn(3 * 8, 2100, device=device) * 4).to(torch.bfloat16)  # 2100: a partial last tile
    got = sum_slots(y, 8)
    want = y.reshape(3, 8, -1).sum(dim=1)
    if device == "cpu":
        assert torch.equal(got, want)
    else:  # torch's reduction may add the 8 rows in another order
        torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-2)
    with pytest.raises(ValueError, match="sum_slots takes"):
        sum_slots(y[:5], 8)
    residual = (torch.randn(3, 2100, device=device) * 64).to(torch.bfloat16)
    assert torch.equal(sum_slots(y, 8, residual), residual + got)  # the decoder layer's add, in the same launch
    with pytest.raises(ValueError, match="residual must be"):
        sum_slots(y, 8, residual[:2])


@pytest.mark.parametrize("group_size", [64, -1])
def test_summed_expert_gemv_gives_the_gemv_then_sum_slots_bits(device, group_size):
    """w4a8_moe_gemv_sum (the down projection at decode, slots summed in registers) against the two
    launches it replaces, bit for bit: per-channel and grouped scales, N = 100 (a partial tile), a
    token routed twice to one expert, with and without the residual."""
    torch.manual_seed(2)
    experts, n, k, tokens, top_k = 4, 100, 128, 3, 3
    quantized = [quantize_weight(torch.randn(n, k, device=device), group_size) for _ in range(experts)]
    packed = torch.stack([pack_w4a8(q, group_size) for q, _ in quantized])
    scales = torch.stack([scales_to_kernel(s) for _, s in quantized])
    x_q, x_scale = per_token_quant_int8(torch.randn(tokens * top_k, k, device=device))
    ids = torch.tensor([[0, 3, 1], [2, 2, 0], [1, 0, 3]], device=device, dtype=torch.int32)
    weights = torch.rand(tokens, top_k, device=device).to(torch.bfloat16)
    residual = (torch.randn(tokens, n, device=device) * 8).to(torch.bfloat16)
    slots = w4a8_moe_gemv(x_q, x_scale, packed, scales, ids, group_size, 1, torch.bfloat16, weights)
    for res in (None, residual):
        got = w4a8_moe_gemv_sum(x_q, x_scale, packed, scales, ids, group_size, weights, torch.bfloat16, res)
        assert torch.equal(got, sum_slots(slots, top_k, res))
    with pytest.raises(ValueError, match="one x_q row per slot"):
        w4a8_moe_gemv_sum(x_q[:4], x_scale[:4], packed, scales, ids, group_size, weights, torch.bfloat16)
    with pytest.raises(ValueError, match="residual must be"):
        w4a8_moe_gemv_sum(x_q, x_scale, packed, scales, ids, group_size, weights, torch.bfloat16, residual[:2])


def stacked_experts(experts: int, n: int, k: int, group_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    quantized = [quantize_weight(torch.randn(n, k, device=device), group_size) for _ in range(experts)]
    return (torch.stack([pack_w4a8(q, group_size) for q, _ in quantized]),
            torch.stack([scales_to_kernel(s) for _, s in quantized]))


@pytest.mark.parametrize("group_size,inter", [(64, 128), (-1, 100)])
def test_glu_gemv_gives_the_down_gemv_silu_mul_quant_values(device, group_size, inter):
    """w4a8_moe_gemv_glu (gate/up GEMV, SiLU-mul in the epilogue) then the down GEMVs quantizing its
    bf16 rows as they load, against gate/up GEMV -> silu_mul_quant -> down GEMV, bit for bit: both
    down GEMVs, grouped and per-channel scales, I = 100 (a partial tile), a token routed twice."""
    torch.manual_seed(3)
    experts, hidden, tokens, top_k = 4, 64, 3, 3
    w13, s13 = stacked_experts(experts, 2 * inter, hidden, 64 if group_size == 64 else -1, device)
    w2, s2 = stacked_experts(experts, hidden, inter, group_size, device)
    x_q, x_scale = per_token_quant_int8(torch.randn(tokens, hidden, device=device))
    ids = torch.tensor([[0, 3, 1], [2, 2, 0], [1, 0, 3]], device=device, dtype=torch.int32)
    weights = torch.rand(tokens, top_k, device=device).to(torch.bfloat16)
    residual = (torch.randn(tokens, hidden, device=device) * 8).to(torch.bfloat16)
    h_q, h_scale = silu_mul_quant(w4a8_moe_gemv(x_q, x_scale, w13, s13, ids, group_size, top_k, torch.bfloat16))
    act, absmax = w4a8_moe_gemv_glu(x_q, x_scale, w13, s13, ids, group_size, top_k, torch.bfloat16)
    q, scale = per_token_quant_int8(act)
    assert torch.equal(q, h_q) and torch.equal(scale, h_scale)
    assert torch.equal(absmax.amax(1, keepdim=True), act.float().abs().amax(1, keepdim=True))
    want = w4a8_moe_gemv(h_q, h_scale, w2, s2, ids, group_size, 1, torch.bfloat16, weights)
    assert torch.equal(w4a8_moe_gemv(act, absmax, w2, s2, ids, group_size, 1, torch.bfloat16, weights), want)
    assert torch.equal(w4a8_moe_gemv_sum(act, absmax, w2, s2, ids, group_size, weights, torch.bfloat16, residual),
                       sum_slots(want, top_k, residual))
    with pytest.raises(ValueError, match="absmax partials"):
        w4a8_moe_gemv(act, absmax[:2], w2, s2, ids, group_size, 1, torch.bfloat16, weights)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_route_gives_the_linear_then_topk_values_and_is_batch_invariant(device, weight_dtype):
    """route: the split Triton GEMV up to ROUTER_MAX_TOKENS tokens, F.linear beyond; either way
    torch's values, and a token routes bit for bit alike alone and in a batch of decode rows.
    bf16 logits (Qwen3's) tie or sit one rounding apart, where either choice is the router's:
    ids are compared on rows whose top 5 logits are 0.1 apart, and every row must choose logits
    equal to the best within 2%."""
    torch.manual_seed(1)
    weight = (torch.randn(16, 2100, device=device) * 0.05).to(weight_dtype)  # H = 2100: a partial tile
    x = torch.randn(ROUTER_MAX_TOKENS + 3, 2100, device=device, dtype=torch.bfloat16)
    compared = 0
    for rows in (x[:1], x[:ROUTER_MAX_TOKENS], x):
        weights, ids = route(rows, weight, 4, True, torch.bfloat16)
        logits = torch.nn.functional.linear(rows.to(weight_dtype), weight).float()
        want_weights, want_ids = topk_softmax_ref(logits, 4, True, torch.bfloat16)
        top5 = logits.topk(5).values
        clear = (top5[:, :-1] - top5[:, 1:]).min(-1).values > 0.1
        compared += int(clear.sum())
        assert torch.equal(ids[clear], want_ids[clear])
        torch.testing.assert_close(weights[clear].float(), want_weights[clear].float(), rtol=2**-7, atol=0)
        torch.testing.assert_close(logits.gather(-1, ids.long()), top5[:, :4], rtol=0.02, atol=0.02)
    assert compared >= 8, f"only {compared} rows without a near-tie to compare ids on"
    alone = route(x[3:4], weight, 4, True, torch.bfloat16)
    batched = route(x[:ROUTER_MAX_TOKENS], weight, 4, True, torch.bfloat16)
    assert torch.equal(alone[0], batched[0][3:4]) and torch.equal(alone[1], batched[1][3:4])
    with pytest.raises(ValueError, match="does not match the router weight"):
        route(x[:, :100], weight, 4, True, torch.bfloat16)
