"""Fewer launches per layer: fused projections and fused activation quantization, after loading.

`fuse_w4a8(model)` rewrites a loaded W4A8 model in place, keeping transformers' modules and
their forward code (but for Qwen3 attention's static-cache decode step, see below):
- q/k/v become one W4A8Linear (weights concatenated along N); q_proj, k_proj and v_proj become
  `ProjectionSlice`s that return their columns of the one GEMM's output (the attention code
  calls them one after another on the same input, so the GEMM runs on the first call);
- gate/up become one W4A8Linear and the MLP a `FusedMLP`: GEMM, then `silu_mul_quant` (SiLU(gate)
  * up quantized to int8 in one pass), then the down GEMM on that int8 input;
- RMSNorms in front of a fused projection become `TritonRMSNorm(quantize=True)`: one kernel
  returns the normalized x and its int8 quantization, attached to the output tensor
  (`attach_int8`), which the next W4A8Linear takes instead of quantizing again; Qwen3's q/k
  norms become `TritonRMSNorm(quantize=False)`, one kernel each, and the attention module gets a
  decode step of four launches, the decoder layer one with its residual adds in GEMM epilogues
  (decode_step.py);
- routed experts are stacked ([E, N, K/2]) so that they run as one grouped launch (moe.py), and
  transformers' sparse MoE block becomes `FusedSparseMoE`: routing in one kernel
  (kernels/moe_routing.py), router weights applied in the down projection's epilogue, the
  RMSNorm before it quantizing as it normalizes.
Per decode layer of Qwen3 that is 2 quantizations, 4 GEMMs and 4 one-kernel norms instead of 7
quantizations, 7 GEMMs and 4 six-kernel HF norms. Values equal the unfused path's: same int8 inputs, same
weights; only fp32 summation order inside a GEMM may differ (tile and split choices).

Only layers that run the Triton path without zero points are fused (the torch path and W8A8
checkpoints stay as loaded).
"""

import torch
from torch import nn
from transformers import activations

from kernels.autotune import triton_runs_on
from kernels.fused_act import add_parts_ref, add_rmsnorm_quant, rmsnorm, rmsnorm_quant, rmsnorm_ref, silu_mul_quant
from kernels.linear import W4A8Linear, attach_int8

from .decode_step import defer_layer_outputs, enable_decode_step, enable_decode_step_layer
from .moe import FusedSparseMoE, W4A8Experts

_SILU = (nn.SiLU, getattr(activations, "SiLUActivation", nn.SiLU))  # ACT2FN["silu"] in 4.57 / 5.x


def _fusable(*layers) -> bool:
    first = layers[0]
    return all(isinstance(layer, W4A8Linear) and layer.use_triton and layer.zeros is None
               and layer.group_size == first.group_size and layer.in_features == first.in_features
               and (layer.bias is None) == (first.bias is None) for layer in layers)


def concat_linears(layers: list[W4A8Linear]) -> W4A8Linear:
    """One W4A8Linear computing the given layers' outputs side by side (same input)."""
    first = layers[0]
    fused = W4A8Linear(first.in_features, sum(layer.out_features for layer in layers), first.group_size,
                       first.bias is not None, True, device=first.qweight.device,
                       bias_dtype=first.bias.dtype if first.bias is not None else torch.bfloat16)
    fused.qweight = torch.cat([layer.qweight for layer in layers], dim=0)
    fused.scales = torch.cat([layer.scales for layer in layers], dim=1)
    if first.bias is not None:
        fused.bias = torch.cat([layer.bias for layer in layers])
    return fused


class FusedProjection(nn.Module):
    """One GEMM for several projections of the same input; remembers its last input and output."""

    def __init__(self, linear: W4A8Linear):
        super().__init__()
        self.linear = linear
        self._last: tuple | None = None  # (input, its version, output)

    def output_for(self, x: torch.Tensor) -> torch.Tensor:
        last = self._last
        if last is None or last[0] is not x or last[1] != x._version:
            last = self._last = (x, x._version, self.linear(x))
        return last[2]


class ProjectionSlice(nn.Module):
    """Columns [start, stop) of a FusedProjection's output: stands in for one nn.Linear."""

    def __init__(self, fused: FusedProjection, start: int, stop: int, last: bool):
        super().__init__()
        self.fused = [fused]  # a list, so the module (and its weights) is registered once, by the owner
        self.start, self.stop, self.last = start, stop, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused[0]
        y = fused.output_for(x)[..., self.start:self.stop]
        if self.last:
            fused._last = None  # drop the references: the next layer's input is new
        return y

    def extra_repr(self) -> str:
        return f"columns {self.start}:{self.stop} of the fused projection"


class FusedMLP(nn.Module):
    """down(SiLU(gate(x)) * up(x)) as gate_up GEMM -> silu_mul_quant -> down GEMM on int8."""

    def __init__(self, gate_up: W4A8Linear, down: W4A8Linear):
        super().__init__()
        self.gate_up, self.down = gate_up, down

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, partials: bool = False) -> torch.Tensor:
        """The MLP's output, or `residual + output` (added by the down GEMM: decode_step.py), or
        with `partials` (Triton, no residual) the down GEMM's output as `W4A8Linear(partials=True)`
        gives it, [S, M, N], for the next layer's norm to sum."""
        h = self.gate_up(x)
        h2 = h.reshape(-1, h.shape[-1])
        res2 = residual.reshape(h2.shape[0], -1) if residual is not None else None
        if partials:
            if residual is not None or not triton_runs_on(h):
                raise ValueError("FusedMLP gives partials on the Triton path only, without a residual")
            y = self.down.forward_int8(*silu_mul_quant(h2), x.dtype, None, partials=True)
            return y if y.dim() == 3 else y[None]
        if triton_runs_on(h):
            y = self.down.forward_int8(*silu_mul_quant(h2), x.dtype, res2)
        else:
            gate, up = h2.chunk(2, dim=-1)
            y = self.down(nn.functional.silu(gate) * up, res2)
        return y.reshape(*x.shape[:-1], y.shape[-1])


class TritonRMSNorm(nn.Module):
    """transformers' RMSNorm in one kernel; with `quantize`, its output also carries its int8
    quantization (attach_int8) for the W4A8 projection after it."""

    def __init__(self, norm: nn.Module, quantize: bool):
        super().__init__()
        self.weight, self.variance_epsilon, self.quantize = norm.weight, norm.variance_epsilon, quantize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not triton_runs_on(x) or x.dtype != self.weight.dtype:
            return rmsnorm_ref(x, self.weight, self.variance_epsilon)
        rows = x.reshape(-1, x.shape[-1])
        if not self.quantize:
            return rmsnorm(rows, self.weight, self.variance_epsilon).view(x.shape)
        y, x_q, x_scale = rmsnorm_quant(rows, self.weight, self.variance_epsilon)
        y = y.view(x.shape)
        attach_int8(y, x_q, x_scale)
        return y

    def add_and_norm(self, parts: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, self(h)) for h = residual + a projection's output given as `W4A8Linear(partials=True)`
        returns it ([S, M, K]): in one launch where the residual's dtype is the weight's and the norm
        quantizes (`add_rmsnorm_quant`, decode_step.py's layer), else reduced and added as the GEMM's
        epilogue would, then normalized."""
        rows = residual.reshape(-1, residual.shape[-1])
        if not (self.quantize and triton_runs_on(rows) and rows.dtype == self.weight.dtype):
            h = add_parts_ref(parts, residual)  # the reduction's order and rounding
            return h, self(h)
        h, y, x_q, x_scale = add_rmsnorm_quant(parts, rows, self.weight, self.variance_epsilon)
        y = y.view(residual.shape)
        attach_int8(y, x_q, x_scale)
        return h.view(residual.shape), y

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, quantize={self.quantize}"


def _fuse_attention(attn: nn.Module) -> bool:
    names = ("q_proj", "k_proj", "v_proj")
    layers = [getattr(attn, name, None) for name in names]
    if not _fusable(*layers):
        return False
    attn.qkv = FusedProjection(concat_linears(layers))
    start = 0
    for name, layer in zip(names, layers):
        setattr(attn, name, ProjectionSlice(attn.qkv, start, start + layer.out_features, name == "v_proj"))
        start += layer.out_features
    return True


def _fused_mlp(mlp: nn.Module) -> FusedMLP | None:
    layers = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj")]
    act = getattr(mlp, "act_fn", None)
    if not _fusable(*layers) or not isinstance(act, _SILU) or not _fusable(getattr(mlp, "down_proj", None)):
        return None
    return FusedMLP(concat_linears(layers), mlp.down_proj)


@torch.no_grad()
def fuse_w4a8(model: nn.Module) -> dict[str, int]:
    """Fuse in place (see the module docstring); returns how many of each fusion were made."""
    made = {"qkv": 0, "mlp": 0, "norm": 0, "experts": 0, "router": 0, "decode_step": 0, "decode_layer": 0}
    for layer in model.model.layers:
        _fuse_layer(layer, made)
        if isinstance(layer.mlp, (FusedMLP, FusedSparseMoE)) and enable_decode_step_layer(layer):
            made["decode_layer"] += 1
    made["deferred_output"] = defer_layer_outputs(model.model.layers)
    return made


def _fuse_layer(layer: nn.Module, made: dict[str, int]) -> None:
    """One decoder layer's projections, MLP or MoE block and norms (counted in `made`)."""
    attn = layer.self_attn
    if _fuse_attention(attn):
        made["qkv"] += 1
        layer.input_layernorm = TritonRMSNorm(layer.input_layernorm, quantize=True)
        made["norm"] += 1
        qk_norms = [name for name in ("q_norm", "k_norm")  # Qwen3's per-head norms
                    if hasattr(getattr(attn, name, None), "variance_epsilon")]
        for name in qk_norms:
            setattr(attn, name, TritonRMSNorm(getattr(attn, name), quantize=False))
            made["norm"] += 1
        if len(qk_norms) == 2 and enable_decode_step(attn):
            made["decode_step"] += 1
    mlp = layer.mlp
    fused = _fused_mlp(mlp)
    if fused is not None:
        layer.mlp = fused
        layer.post_attention_layernorm = TritonRMSNorm(layer.post_attention_layernorm, quantize=True)
        made["mlp"] += 1
        made["norm"] += 1
        return
    shared = getattr(mlp, "shared_experts", None) or getattr(mlp, "shared_expert", None)
    fused_shared = _fused_mlp(shared) if shared is not None else None
    if fused_shared is not None:
        setattr(mlp, "shared_experts" if hasattr(mlp, "shared_experts") else "shared_expert", fused_shared)
        made["mlp"] += 1
    experts = getattr(mlp, "experts", None)
    if isinstance(experts, W4A8Experts) and experts.stack():
        made["experts"] += 1
        if FusedSparseMoE.fits(mlp):
            layer.mlp = FusedSparseMoE(mlp)
            layer.post_attention_layernorm = TritonRMSNorm(layer.post_attention_layernorm, quantize=True)
            made["router"] += 1
            made["norm"] += 1
