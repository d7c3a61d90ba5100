"""Decode attention over a static KV cache that reads only the filled slots (Triton, split-KV).

A static cache (adapters/static_decode.py) has a fixed length L so that a CUDA graph can replay
the step, and SDPA then reads all L slots behind an additive mask. At 500 new tokens the cache
is L = 768 with 16..516 slots filled: SDPA (cutlass memory-efficient) took 31 us a layer of a
Qwen3-8B step on the H100, 13% of the step. This kernel takes the slot being written as a device
tensor (`slot`, the graph advances it), so the number of slots read follows the real length
while shapes and addresses stay fixed:

- stage 1, grid (batch, kv_heads, splits): a program takes all g query heads of its K/V head
  (GQA: K/V read once, the g rows padded to 16 for `tl.dot`) against one chunk of slots, with an
  online softmax; a chunk past `slot` returns at once. It writes the chunk's normalized output
  and its log-sum-exp;
- stage 2, grid (batch, q_heads): the chunks' outputs weighted by their softmax mass.

The additive mask (0 or the dtype's minimum, as static_decode keeps it) still applies within the
filled slots, for left-padded prompts. P is rounded to the cache dtype before P @ V, as flash
attention does; everything else is fp32. Under TRITON_INTERPRET the dots run in fp32: the
interpreter (triton 3.6) multiplies bf16 operands' raw bits (ones @ ones gave 4.2e9).
"""

import torch
import triton
import triton.language as tl

from .autotune import interpreting
from .pdl import pdl, pdl_enter

BLOCK_N = 64  # slots per inner iteration
MAX_SPLITS = 32  # chunks per (batch, kv head); stage 2 holds them all in registers


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, slot_ptr, part_ptr, lse_ptr,
    chunk, scale,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl, stride_mb,
    G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr,
    UPCAST: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    pdl_enter(USE_PDL)
    b, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n = tl.load(slot_ptr) + 1  # slots [0, n) hold keys, the current token's included
    start = s * chunk
    rows = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D], tl.float32)
    if start < n:
        q = tl.load(q_ptr + b * stride_qb + (h * G + rows)[:, None] * stride_qh + offs_d[None, :],
                    mask=rows[:, None] < G, other=0.0)
        dot_dtype = tl.float32 if UPCAST else q.dtype
        k_base = k_ptr + b * stride_kb + h * stride_kh
        v_base = v_ptr + b * stride_vb + h * stride_vh
        end = tl.minimum(start + chunk, n)
        for off in range(start, end, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            live = cols < end
            k = tl.load(k_base + cols[:, None] * stride_kl + offs_d[None, :], mask=live[:, None], other=0.0)
            scores = tl.dot(q.to(dot_dtype), tl.trans(k.to(dot_dtype))) * scale
            bias = tl.load(mask_ptr + b * stride_mb + cols, mask=live, other=0.0).to(tl.float32)
            scores = tl.where(live[None, :], scores + bias[None, :], float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + cols[:, None] * stride_vl + offs_d[None, :], mask=live[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype).to(dot_dtype), v.to(dot_dtype))
            m_i = m_new
    out = tl.where(l_i[:, None] > 0, acc / tl.maximum(l_i, 1e-30)[:, None], 0.0)
    lse = tl.where(l_i > 0, m_i + tl.log(tl.maximum(l_i, 1e-30)), float("-inf"))
    head = (b * tl.num_programs(1) + h) * G + rows  # flat (batch, q head) index
    tl.store(part_ptr + (head[:, None] * SPLITS + s) * D + offs_d[None, :], out, mask=rows[:, None] < G)
    tl.store(lse_ptr + head * SPLITS + s, lse, mask=rows < G)


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, out_ptr, absmax_ptr, SPLITS: tl.constexpr, D: tl.constexpr,
                    ABSMAX: tl.constexpr, USE_PDL: tl.constexpr = False):
    pdl_enter(USE_PDL)
    head = tl.program_id(0)  # flat (batch, q head); out is [B, 1, Hq, D] contiguous, so also its row
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, D)
    lse = tl.load(lse_ptr + head * SPLITS + offs_s)
    weight = tl.exp(lse - tl.max(lse, axis=0))
    parts = tl.load(part_ptr + (head * SPLITS + offs_s)[:, None] * D + offs_d[None, :])
    out = (tl.sum(weight[:, None] * parts, axis=0) / tl.sum(weight, axis=0)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + head * D + offs_d, out)
    if ABSMAX:  # the head's share of its row's int8 scale, for o_proj's GEMV (attach_absmax)
        tl.store(absmax_ptr + head, tl.max(tl.abs(out.to(tl.float32)), axis=0))


def split_plan(length: int) -> tuple[int, int]:
    """(chunk, splits): chunks of whole BLOCK_N blocks, at most MAX_SPLITS, a power of two of
    them (stage 2's tl.arange); L = 768 gives 16 chunks of 64 slots."""
    blocks = -(-length // BLOCK_N)
    splits = min(MAX_SPLITS, triton.next_power_of_2(blocks))
    chunk = -(-blocks // splits) * BLOCK_N
    return chunk, splits


def decode_attention_fits(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether decode_attention takes these shapes: one query token, whole GQA groups, and a
    power-of-two head_dim >= 16 (`tl.dot` and `tl.arange` sizes)."""
    d = query.shape[-1]
    return query.shape[2] == 1 and query.shape[1] % key.shape[1] == 0 and d >= 16 and d & (d - 1) == 0


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor,
                     slot: torch.Tensor, scale: float, absmax: bool = False):
    """Attention of one new token per row over cache slots [0, slot].

    query [B, Hq, 1, D]; key, value [B, Hkv, L, D] (last dim contiguous); key_mask additive,
    broadcastable to [B, L] with unit stride over L; slot: device int64 scalar, the slot the
    current token's K/V were written to. Returns [B, 1, Hq, D] in query's dtype (the layout HF
    attention functions return); with `absmax`, also each head's max |output| (fp32 [B, Hq]): the
    absmax partials of the rows o_proj reads (`linear.attach_absmax`)."""
    b, hq, t, d = query.shape
    hkv, length = key.shape[1], key.shape[2]
    if not decode_attention_fits(query, key):
        raise ValueError(f"decode_attention takes one query token, whole GQA groups and a power-of-two "
                         f"head_dim >= 16: query {tuple(query.shape)}, key {tuple(key.shape)}")
    g = hq // hkv
    chunk, splits = split_plan(length)
    mask = key_mask.reshape(key_mask.shape[0], key_mask.shape[-1])
    if mask.stride(-1) != 1:
        mask = mask.contiguous()
    part = torch.empty((b * hq, splits, d), dtype=torch.float32, device=query.device)
    lse = torch.empty((b * hq, splits), dtype=torch.float32, device=query.device)
    out = torch.empty((b, 1, hq, d), dtype=query.dtype, device=query.device)
    _split_kernel[(b, hkv, splits)](
        query, key, value, mask, slot, part, lse,
        chunk, scale,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), mask.stride(0) if mask.shape[0] > 1 else 0,
        G=g, G_PAD=max(16, triton.next_power_of_2(g)), D=d, SPLITS=splits, BLOCK=BLOCK_N,
        UPCAST=interpreting(), **pdl(query.device),
    )
    head_absmax = torch.empty((b, hq) if absmax else (0,), dtype=torch.float32, device=query.device)
    _combine_kernel[(b * hq,)](part, lse, out, head_absmax, SPLITS=splits, D=d, ABSMAX=absmax, **pdl(query.device))
    return (out, head_absmax) if absmax else out
