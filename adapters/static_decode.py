"""Greedy decoding with a static KV cache, each decode step replayed from a CUDA graph.

HF eager `generate` is launch-bound at batch 1: a Qwen3-8B W4A8 step issued ~2,500 kernels
from Python, 69 ms of CPU against ~12 ms of GPU (H100). Here the whole step (embedding, every
layer, the lm_head, argmax, cache and mask bookkeeping) is captured once into a CUDA graph and
replayed: one CPU call per token.

What a graph needs, and how the step provides it:
- fixed shapes and addresses: `StaticKVCache` holds [B, kv_heads, L, head_dim] per layer for the
  whole generation; an additive mask (the dtype's minimum on unused and padded slots, exactly 0
  after softmax) covers all L slots, and the decode step's attention kernel
  (kernels/decode_attention.py) reads the slots up to the one written, from a device tensor;
- no host syncs: the write slot, positions and the next token live in device tensors that the
  graph itself advances (`index_copy_`, `add_`), so the host only calls `replay()`;
- the same code outside the graph: `StaticDecoder.step` is an ordinary function; the first
  decode step runs it eagerly (it tunes and plans the W4A8 kernels for this batch), later steps
  replay its capture. With `use_graph=False` (or on a CPU) every step runs eagerly, which is
  how the CPU tests check this path's greedy tokens against the model's own.

It drives transformers' own model classes: they take a cache (any object with HF's `update`;
the argument is `past_key_values` up to transformers 5.23, `cache` from 5.24), explicit
`position_ids` and a 4D mask, which masking_utils passes through untouched.
"""

import inspect
import warnings

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache

from kernels.autotune import triton_runs_on
from kernels.decode_attention import decode_attention, decode_attention_fits

from .moe import W4A8Experts

CACHE_ROUND = 256  # max_len is rounded up so that graphs are reused across close lengths
ATTENTION = "wb_grouped_sdpa"
DECODE_SLOT = "wb_decode_slot"  # forward kwarg that transformers hands through to the attention function
PREFILL_LEN = "wb_prefill_len"  # likewise: a prefill of T unpadded tokens into the empty cache


def grouped_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA for grouped-query attention without copying K/V per query head.

    HF's sdpa path repeats each K/V head for its query heads (`repeat_kv`) whenever a mask is
    given: on the static cache that is two copies of the whole cache per layer and step
    (Qwen3-8B, 768 slots: 72 copies of 6 MB, 0.63 ms of a 8.4 ms step on the H100). Instead the
    g query heads of one K/V head become g * T query rows of that head (rows ordered (head, t),
    so the [T, L] mask is tiled g times), which is the same attention with K/V read once.

    A decode step of StaticDecoder passes the slot it writes (`DECODE_SLOT`, a device tensor)
    and goes to kernels.decode_attention instead, which reads the filled slots only. A prefill
    with no padded row (`PREFILL_LEN` = T) attends causally over slots [0, T) alone, which SDPA
    runs as a causal flash kernel with no mask at all: the masked kernel over the whole cache
    took 0.97 ms a layer for a 4096-token Qwen3-8B prompt on the H100, causal flash 0.25 ms.
    """
    b, hq, t, d = query.shape
    slot = kwargs.get(DECODE_SLOT)
    if slot is not None and triton_runs_on(query) and decode_attention_fits(query, key):
        return decode_attention(query, key, value, attention_mask, slot, scaling or d ** -0.5), None
    if kwargs.get(PREFILL_LEN) == t:
        out = torch.nn.functional.scaled_dot_product_attention(query, key[:, :, :t], value[:, :, :t], is_causal=True,
                                                               scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    hkv = key.shape[1]
    g = hq // hkv
    length = key.shape[-2]
    mask = attention_mask[..., :length] if attention_mask is not None else None
    if mask is None and t > 1:  # causal, bottom-right aligned (the last query sees every key)
        mask = torch.ones(t, length, dtype=torch.bool, device=query.device).tril(length - t)[None, None]
    if mask is not None and t > 1 and g > 1:
        mask = mask.repeat(1, 1, g, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query.reshape(b, hkv, g * t, d), key, value,
                                                           attn_mask=mask, scale=scaling)
    return out.reshape(b, hq, t, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, grouped_sdpa)


class _FullAttentionLayer:
    """What masking_utils reads of a cache layer (5.x) to pick the mask of full-attention layers."""

    is_sliding = is_linear = is_dummy = False
    is_compileable = True


class StaticKVCache(Cache):
    """K/V tensors of fixed size for every layer; `slot` (device int64) is where `update` writes.

    Cache.__init__ is not called: its signature changed between transformers 4.57 and 5.x, and
    models only call `update` on it and read its layers' kinds (a subclass so that isinstance
    checks pass)."""

    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.slot = torch.zeros((), dtype=torch.long, device=device)
        self.max_len = max_len
        self.layers = [_FullAttentionLayer()] * n_layers

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        where = self.slot + torch.arange(key_states.shape[-2], device=key_states.device)
        self.keys[layer_idx].index_copy_(2, where, key_states)
        self.values[layer_idx].index_copy_(2, where, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.max_len

    def __len__(self) -> int:
        return len(self.keys)


def _kv_layout(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


class StaticDecoder:
    """Decoding state for one model, batch size and cache length (reused across `generate` calls)."""

    def __init__(self, model: nn.Module, batch: int, max_len: int, use_graph: bool):
        param = next(model.parameters())
        self.model, self.batch, self.max_len, self.device = model, batch, max_len, param.device
        self.dtype = model.model.embed_tokens.weight.dtype
        n_layers, kv_heads, head_dim = _kv_layout(model.config)
        self.cache = StaticKVCache(n_layers, batch, kv_heads, max_len, head_dim, self.dtype, self.device)
        dev = self.device
        self.blocked = torch.finfo(self.dtype).min
        self.key_mask = torch.full((batch, 1, 1, max_len), self.blocked, dtype=self.dtype, device=dev)
        self.tokens = torch.zeros((batch, 1), dtype=torch.long, device=dev)  # the token being fed
        self.position = torch.zeros((batch, 1), dtype=torch.long, device=dev)  # its rope position
        self.generated = torch.zeros((batch, max_len), dtype=torch.long, device=dev)
        self.count = torch.zeros((), dtype=torch.long, device=dev)  # tokens written to `generated`
        self.use_graph = use_graph and dev.type == "cuda" and _capturable(model)
        self.graph: torch.cuda.CUDAGraph | None = None
        # transformers 5.24 renamed past_key_values to cache (the old name warns, until 5.40)
        forward_args = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in forward_args else "past_key_values"

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Run the prompt (eager), fill slots [0, T) and set up the first decode step."""
        b, t = input_ids.shape
        valid = attention_mask.to(torch.bool)
        self.key_mask.fill_(self.blocked)
        self.key_mask[:, 0, 0, :t].masked_fill_(valid, 0.0)
        slots = torch.arange(self.max_len, device=self.device)
        causal = slots[None, :] <= torch.arange(t, device=self.device)[:, None]  # [T, L]
        allowed = causal[None, None] & (self.key_mask == 0)
        # a padding query attends to itself, so that its (unused) output is finite: NaN in the
        # padded slots' K/V would reach valid rows as 0 * NaN in the attention product
        allowed |= slots[None, None, None, :] == torch.arange(t, device=self.device)[None, None, :, None]
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill_(~allowed, self.blocked)
        position = (valid.long().cumsum(-1) - 1).clamp_(min=0)  # as HF generate: left padding skipped
        self.cache.slot.zero_()
        unpadded = {PREFILL_LEN: t} if bool(valid.all()) else {}  # one host sync a prompt
        logits = self._forward(input_ids=input_ids, attention_mask=mask, position_ids=position, logits_to_keep=1,
                               **unpadded).logits
        self.cache.slot.fill_(t)
        self.tokens.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.position.copy_(position[:, -1:] + 1)
        self.count.zero_()
        self.generated[:, :1].copy_(self.tokens)
        self.count.add_(1)

    def step(self) -> None:
        """One decode step on device state only (what the graph captures)."""
        self.key_mask.index_fill_(-1, self.cache.slot.view(1), 0.0)  # the slot written now
        logits = self._forward(input_ids=self.tokens, attention_mask=self.key_mask, position_ids=self.position,
                               logits_to_keep=1, **{DECODE_SLOT: self.cache.slot}).logits
        self.tokens.copy_(logits[:, -1].argmax(-1, keepdim=True))
        self.generated.index_copy_(1, self.count.view(1), self.tokens)
        self.count.add_(1)
        self.cache.slot.add_(1)
        self.position.add_(1)

    def _forward(self, **inputs):
        """The model's forward on the static cache, with `grouped_sdpa` as its attention (set for
        this call only: the config is the model's, and HF generate's dynamic-cache path keeps HF's own)."""
        config = self.model.config
        before = config._attn_implementation
        config._attn_implementation = ATTENTION
        try:
            return self.model(**inputs, **{self.cache_argument: self.cache}, use_cache=True)
        finally:
            config._attn_implementation = before

    def advance(self) -> None:
        if not self.use_graph:
            self.step()
        elif self.graph is not None:
            self.graph.replay()
        else:  # first step: eager (kernels plan and tune for this batch), then capture
            self.step()
            self.graph = _capture(self.step, self.device)


def _capturable(model: nn.Module) -> bool:
    """False (with a warning) when a module needs host syncs: experts run one by one, reading
    which experts got tokens on the host. That is W4A8Experts not stacked (W8A8 or zero-point
    experts, the torch path) and transformers 4.x's own per-expert ModuleList."""
    loops = [name for name, m in model.named_modules() if name.endswith(".experts") and isinstance(m, nn.ModuleList)
             and getattr(m, "stacked", None) is None]
    if loops:
        how = "a host-synchronized loop" + (" (not stacked by fusion.fuse_w4a8)"
                                            if isinstance(model.get_submodule(loops[0]), W4A8Experts) else "")
        warnings.warn(f"{loops[0]} runs its experts in {how}: decoding without CUDA graphs", stacklevel=3)
    return not loops


def _capture(fn, device: torch.device) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize(device)
    with torch.cuda.graph(graph):
        fn()
    return graph


def _decoder_for(model: nn.Module, batch: int, length: int, use_graph: bool) -> StaticDecoder:
    """The model's decoder for this batch and length (one kept per model: a new shape replaces it)."""
    max_len = -(-length // CACHE_ROUND) * CACHE_ROUND
    decoder = getattr(model, "_static_decoder", None)
    if decoder is None or (decoder.batch, decoder.max_len, decoder.use_graph) != (batch, max_len, use_graph):
        model._static_decoder = None  # free the old cache and graph first
        decoder = model._static_decoder = StaticDecoder(model, batch, max_len, use_graph)
    return decoder


@torch.no_grad()
def static_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    attention_mask: torch.Tensor | None = None, use_graph: bool = True,
                    eos_token_id: int | list[int] | None = None, pad_token_id: int = 0,
                    on_token=None) -> torch.Tensor:
    """Greedy decoding: [B, T] prompt ids -> [B, T + new] ids, as HF `generate(do_sample=False)`
    returns them: a row that produced an EOS is padded with pad_token_id after it, and decoding
    stops once every row has (checked every 32 steps, so without a host sync per token).
    `on_token(ids [B])` is called with every new token (a sync per token, for streaming).
    """
    if max_new_tokens < 1:
        return input_ids
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    b, t = input_ids.shape
    decoder = _decoder_for(model, b, t + max_new_tokens, use_graph)
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
                       dtype=torch.long, device=device)
    check_every = 1 if on_token is not None else 32
    decoder.prefill(input_ids, attention_mask)
    n = 1
    if on_token is not None:
        on_token(decoder.tokens[:, 0].cpu())
    while n < max_new_tokens:
        if n % check_every == 0 and len(eos) and bool(torch.isin(decoder.generated[:, :n], eos).any(1).all()):
            break
        decoder.advance()
        n += 1
        if on_token is not None:
            on_token(decoder.tokens[:, 0].cpu())
    new = decoder.generated[:, :n].clone()
    return torch.cat([input_ids, _after_eos(new, eos, pad_token_id)], dim=1)


def _after_eos(new: torch.Tensor, eos: torch.Tensor, pad: int) -> torch.Tensor:
    """pad after each row's first EOS; cut where the last row ended, if all rows ended."""
    hit = torch.isin(new, eos)
    if not hit.any():
        return new
    done = hit.long().cumsum(1)
    new = new.masked_fill((done > 0) & ~(hit & (done == 1)), pad)
    if hit.any(1).all():
        new = new[:, :int(hit.long().argmax(1).max()) + 1]
    return new
