"""`W4A8Linear`: a drop-in `nn.Linear` replacement that holds only quantized buffers.

Buffers (kernel layout, see packing.py): `qweight` int8 [N, K_pad/2], `scales` fp32 [G, N],
optional `bias` [N]. Build it offline with `from_float`, or at load time with `from_packed`
from an on-disk format; both can target the `meta` device so a large model is never
materialized in high precision (load buffers afterwards with `load_state_dict(assign=True)`).

`use_triton=True` runs the fused Triton kernel on CUDA (or on the CPU under
TRITON_INTERPRET=1); otherwise, and on a CPU without the interpreter, the torch path runs the
same contract in fp32 (int4 and int8 values are exact in fp32; only summation order differs).
"""

import warnings

import torch
from torch import nn

from .autotune import triton_runs_on
from .packing import pack_w4a8, padded_k, repack_awq, repack_ct, unpack_w4a8
from .reference import check_group_size, per_token_quant_int8_ref, quantize_weight
from .act_quant import per_token_quant_int8
from .w4a8_gemm import DECODE_MAX_M, decode_plan, w4a8_gemm
from .w8a8_gemm import w8a8_gemm

PACKED_FORMATS = ("kernel", "awq", "compressed-tensors")
# Attribute a fused producer (adapters/fusion.py: RMSNorm + quantization) sets on its output
# tensor: (its _version, x_q int8 [M, K], x_scale fp32 [M, 1]) of that same tensor, so the next
# W4A8Linear skips its own quantization pass; an in-place change since (version moved) voids it.
INT8_ATTR = "_w4a8_int8"


def attach_int8(x: torch.Tensor, x_q: torch.Tensor, x_scale: torch.Tensor) -> None:
    setattr(x, INT8_ATTR, (x._version, x_q, x_scale))


def attach_absmax(x: torch.Tensor, absmax: torch.Tensor) -> None:
    """Attach the absmax partials of x's rows (fp32 [M, C], their max is the row's max |x|): the
    next W4A8Linear's decode GEMV quantizes x as it loads it, without a quantization launch."""
    attach_int8(x, x.reshape(-1, x.shape[-1]), absmax)


def attached_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x_q, x_scale) attached to x by attach_int8 (or (x, absmax) by attach_absmax), if x has not
    changed in place since."""
    found = getattr(x, INT8_ATTR, None)
    return found[1:] if found is not None and found[0] == x._version else None


def check_linear_shape(in_features: int, out_features: int, group_size: int) -> None:
    check_group_size(in_features, group_size)
    if out_features % 8:
        raise ValueError(f"out_features N={out_features} must be a multiple of 8 for int4 packing")


def w4a8_linear_torch(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, in_features: int,
                      bias: torch.Tensor | None = None, zeros: torch.Tensor | None = None) -> torch.Tensor:
    """Torch path of the contract: x [M, K] float -> [M, N] x.dtype, from kernel-layout buffers."""
    q = unpack_w4a8(qweight, in_features)  # [N, K]
    n_groups = scales.shape[0]
    w = q.to(torch.float32).reshape(q.shape[0], n_groups, -1) * scales.t()[..., None]
    if zeros is not None:
        w = w - zeros.t()[..., None]
    w = w.reshape(q.shape)
    x_q, x_scale = per_token_quant_int8_ref(x)
    y = (x_q.to(torch.float32) @ w.t()) * x_scale
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


class W4A8Linear(nn.Module):
    """y = W4A8(x) + bias for x [..., in_features]; see the module docstring for the buffers."""

    def __init__(self, in_features: int, out_features: int, group_size: int = -1, bias: bool = False,
                 use_triton: bool = True, device=None, bias_dtype: torch.dtype = torch.bfloat16,
                 zero_points: bool = False):
        super().__init__()
        check_linear_shape(in_features, out_features, group_size)
        if group_size == in_features:  # one group is per channel; keep one layout for both
            group_size = -1
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.use_triton = use_triton
        n_groups = 1 if group_size == -1 else in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, padded_k(in_features, group_size) // 2,
                                                    dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.zeros(n_groups, out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        # Asymmetric checkpoints (AutoAWQ with qzeros): W = (q - zo) * s with q = stored - 8 and
        # zo = zero - 8, so W = q * s - zeros with zeros = zo * s, fp32 [G, N]. The kernel runs
        # the symmetric part; zeros enter as a rank-G correction from per-group sums of x_q.
        self.register_buffer("zeros", torch.zeros(n_groups, out_features, dtype=torch.float32, device=device)
                             if zero_points else None)
        self._plans: dict = {}  # (M, x dtype) -> w4a8_gemm.DecodePlan, for decode-sized M

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                       use_triton: bool = True) -> "W4A8Linear":
        """From int4 values q [N, K] and scales [N, G] (as `reference.quantize_weight` returns)."""
        n, k = q.shape
        group_size = -1 if scales.shape[-1] == 1 else k // scales.shape[-1]
        layer = cls(k, n, group_size, bias is not None, use_triton, device=q.device,
                    bias_dtype=bias.dtype if bias is not None else torch.bfloat16)
        layer.qweight.copy_(pack_w4a8(q, group_size))
        layer.scales.copy_(scales.t())
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int = -1, use_triton: bool = True) -> "W4A8Linear":
        """Quantize an `nn.Linear` (weights int4 symmetric, per channel or per group)."""
        check_linear_shape(linear.in_features, linear.out_features, group_size)
        q, scales = quantize_weight(linear.weight, group_size)
        return cls.from_quantized(q, scales, linear.bias, use_triton)

    @classmethod
    def from_packed(cls, weight: torch.Tensor, scales: torch.Tensor, *, fmt: str, in_features: int,
                    bias: torch.Tensor | None = None, use_triton: bool = True) -> "W4A8Linear":
        """From packed tensors of an on-disk format (repacked once into the kernel layout).

        fmt="awq": weight = qweight int32 [K, N/8], scales [K/G, N] (symmetric, stored q + 8).
        fmt="compressed-tensors": weight = weight_packed int32 [N, K/8], scales [N, G].
        fmt="kernel": weight = int8 [N, K_pad/2], scales fp32 [G, N].
        """
        if fmt == "awq":
            weight, scales = repack_awq(weight, scales)
        elif fmt == "compressed-tensors":
            n = weight.shape[0]
            weight, scales = repack_ct(weight, scales, (n, in_features))
        elif fmt != "kernel":
            raise ValueError(f"fmt must be one of {PACKED_FORMATS}, got {fmt!r}")
        n = weight.shape[0]
        group_size = -1 if scales.shape[0] == 1 else in_features // scales.shape[0]
        if weight.shape[1] != padded_k(in_features, group_size) // 2:
            raise ValueError(f"packed weight {tuple(weight.shape)} does not hold in_features={in_features}")
        layer = cls(in_features, n, group_size, bias is not None, use_triton, device=weight.device,
                    bias_dtype=bias.dtype if bias is not None else torch.bfloat16)
        if tuple(scales.shape) != tuple(layer.scales.shape):
            raise ValueError(f"scales {tuple(scales.shape)} do not match {tuple(layer.scales.shape)} "
                             f"for in_features={in_features}, out_features={n}")
        layer.qweight.copy_(weight)
        layer.scales.copy_(scales)
        if bias is not None:
            layer.bias.copy_(bias.detach())
        return layer

    def _triton_runs_here(self, x: torch.Tensor) -> bool:
        if not self.use_triton:
            return False
        if triton_runs_on(x):
            return True
        warnings.warn("W4A8Linear(use_triton=True) on CPU without TRITON_INTERPRET=1: using the torch path",
                      stacklevel=3)
        self.use_triton = False  # warn once per layer
        return False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, partials: bool = False) -> torch.Tensor:
        """y = x W^T (+ bias); with `residual` (x's shape but out_features), `residual + y` as
        torch adds it, in the decode GEMM's epilogue where the plan takes it (decode_step.py).
        `partials`: [S, M, N]: where a decode plan splits K (no bias, no residual) its fp32
        partials unsummed, for a consumer that sums them in the reduction's order (qk_rope.py);
        otherwise y as [1, M, N]."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"W4A8Linear expects in_features={self.in_features}, got input {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        res2 = residual.reshape(-1, self.out_features) if residual is not None else None
        quantized = attached_int8(x)
        if not self._triton_runs_here(x):
            y = _add(res2, w4a8_linear_torch(x2, self.qweight, self.scales, self.in_features, self.bias, self.zeros))
        elif quantized is not None:  # a fused producer already quantized x (kernels/fused_act.py)
            y = self.forward_int8(*quantized, x.dtype, res2, partials)
        elif self.zeros is None and 0 < x2.shape[0] <= DECODE_MAX_M and x2.dtype.is_floating_point:
            plan = self._plan(x2.shape[0], x2.dtype, lambda: x2)
            if plan.accepts(x2) and (res2 is None or plan.accepts_residual(res2)):
                y = plan(x2, self.qweight, self.scales, self.bias, res2, partials)
            else:
                y = _add(res2, self._gemm(x2, None, x.dtype))
        else:
            y = _add(res2, self._gemm(*per_token_quant_int8(x2), x.dtype))
        if partials:  # [SPLIT_K, M, N] fp32, or y as [1, M, N]
            return y if y.dim() == 3 else y.reshape(1, -1, self.out_features)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward_int8(self, x_q: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype,
                     residual: torch.Tensor | None = None, partials: bool = False) -> torch.Tensor:
        """y [M, N] out_dtype (+ residual [M, N]) for an input already quantized per token: x_q
        int8 [M, K], x_scale [M, 1]; or float rows x_q [M, K] with their absmax partials x_scale
        [M, C] (attach_absmax), which a decode GEMV plan quantizes as it loads them."""
        if x_q.is_floating_point():
            m = x_q.shape[0]
            if (self._triton_runs_here(x_q) and self.zeros is None and 0 < m <= DECODE_MAX_M
                    and x_scale.is_contiguous()):
                plan = self._plan(m, out_dtype, lambda: x_q)
                if plan.gemv and plan.accepts(x_q) and (residual is None or plan.accepts_residual(residual)):
                    return plan.quantized(x_q, x_scale, self.qweight, self.scales, self.bias, residual, partials)
            x_q, x_scale = (per_token_quant_int8 if self.use_triton else per_token_quant_int8_ref)(x_q)
        if not self._triton_runs_here(x_q):
            return _add(residual, w4a8_linear_torch(x_q.to(torch.float32) * x_scale, self.qweight, self.scales,
                                                    self.in_features, self.bias, self.zeros).to(out_dtype))
        m = x_q.shape[0]
        if self.zeros is None and 0 < m <= DECODE_MAX_M and x_q.is_contiguous() and x_q.data_ptr() % 16 == 0:
            plan = self._plan(m, out_dtype, lambda: (x_q.to(torch.float32) * x_scale).to(out_dtype))
            if residual is None or plan.accepts_residual(residual):
                return plan.quantized(x_q, x_scale, self.qweight, self.scales, self.bias, residual, partials)
        return _add(residual, self._gemm(x_q, x_scale, out_dtype))

    def _gemm(self, x_q: torch.Tensor, x_scale: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
        """The general Triton path (any M, zero points); x_q may also be a float x (x_scale None)."""
        if self.zeros is None:
            return w4a8_gemm(x_q, self.qweight, self.scales, self.group_size, self.bias, x_scale=x_scale,
                             out_dtype=out_dtype)
        if x_scale is None:
            x_q, x_scale = per_token_quant_int8(x_q)
        y = w4a8_gemm(x_q, self.qweight, self.scales, self.group_size, x_scale=x_scale, out_dtype=torch.float32)
        group_sums = x_q.to(torch.float32).reshape(x_q.shape[0], self.zeros.shape[0], -1).sum(-1)  # [M, G]
        y = y - x_scale * (group_sums @ self.zeros)
        return (y + self.bias.to(torch.float32) if self.bias is not None else y).to(out_dtype)

    def _plan(self, m: int, dtype: torch.dtype, example):
        """The layer's `DecodePlan` for M = m and output dtype: checks, config lookup and Triton's
        argument binding done once per (M, dtype), not on every call (they cost more CPU than the
        GEMM takes GPU). `example()` gives a float input to tune on, the first time."""
        plan = self._plans.get((m, dtype))
        if plan is not None and not plan.holds(self.qweight, self.scales, self.bias):
            self._plans.clear()  # new buffers (.to(), a reload): plan again
            plan = None
        if plan is None:
            plan = decode_plan(example(), self.qweight, self.scales, self.group_size, self.bias)
            if not (self.qweight.is_cuda and torch.cuda.is_current_stream_capturing()):  # untuned in a capture
                self._plans[(m, dtype)] = plan
        return plan

    def __getstate__(self):  # copies and pickles plan again (plans hold compiled kernels)
        return {**super().__getstate__(), "_plans": {}}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, zero_points={self.zeros is not None}, "
                f"use_triton={self.use_triton}")


def _add(residual: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
    return y if residual is None else residual + y


class W8A8Linear(nn.Module):
    """SmoothQuant-style W8A8: int8 weight [N, K] per output channel, per-token int8 activations,
    run through `w8a8_gemm` (Triton) or the same arithmetic in torch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, use_triton: bool = True,
                 device=None, bias_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features, self.use_triton = in_features, out_features, use_triton
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    _triton_runs_here = W4A8Linear._triton_runs_here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"W8A8Linear expects in_features={self.in_features}, got input {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        if self._triton_runs_here(x):
            x_q, x_scale = per_token_quant_int8(x2)
            y = w8a8_gemm(x_q, x_scale, self.weight, self.weight_scale, self.bias, out_dtype=x.dtype)
        else:
            x_q, x_scale = per_token_quant_int8_ref(x2)
            y = (x_q.to(torch.float32) @ self.weight.to(torch.float32).t()) * x_scale * self.weight_scale
            y = (y + self.bias.to(torch.float32) if self.bias is not None else y).to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)
