"""Checkpoint formats: which layers are quantized, how each format names and packs them.

Formats (../shared/ARCHITECTURE.md, "Checkpoint formats"):
- `awq-sym`: `<layer>.qweight` int32 [K, N/8] (AutoAWQ GEMM order, stored q + 8) and
  `<layer>.scales` fp16 [G, N]; no qzeros (qzeros all 8 are accepted). config
  `quantization_config: {quant_method: awq, bits: 4, group_size, zero_point: false, version: gemm}`.
- `compressed-tensors` pack-quantized: `<layer>.weight_packed` int32 [N, K/8], `.weight_scale`
  [N, G], `.weight_shape` int64 [2]; its `int-quantized` variant stores int4 values unpacked in
  an int8 `<layer>.weight`. Config under `quantization_config` or (llmc) `compression_config`.
  Written (config and packing) by the compressed-tensors package itself, so that it is what
  llm-compressor writes and transformers' integration loads; read without it, as a port must
  (tests/adapters/test_interop.py holds the two to each other).
- `awq` asymmetric (AutoAWQ / llmc `save_autoawq`, W4A16 checkpoints): as awq-sym plus
  `<layer>.qzeros` int32 [G, N/8]; run as W4A8 by quantizing activations on the fly, the zero
  points folded into a per-group correction (`W4A8Linear(zero_points=True)`).
- `int8-stored` (the seed's older testing format): int4 values in an int8 `<layer>.weight`
  [N, K] with `<layer>.weight_scale` [N, G]; config `{quant_method: int8-stored, bits: 4, group_size}`.
- W8A8 (SmoothQuant-style, compressed-tensors `int-quantized` with 8-bit weights): int8
  `<layer>.weight` [N, K] and per-channel `<layer>.weight_scale` [N, 1], run by `W8A8Linear`.
Every format is turned into the kernel layout once, at load time (`to_kernel`).
"""

import re
from dataclasses import dataclass

import torch

from kernels import W4A8Linear, W8A8Linear
from kernels.packing import (pack_awq, pack_w4a8, repack_awq, repack_ct, scales_to_kernel, unpack_awq,
                             unpack_nibbles_awq)

FORMATS = ("awq-sym", "compressed-tensors")
# Linear layers the W4A8 contract quantizes: attention and MLP projections, including routed
# experts (`mlp.experts.<e>.*`) and Ernie's shared experts. Routers (`mlp.gate`), embeddings,
# lm_head and norms keep their precision.
QUANTIZED_LAYER = re.compile(r"(^|\.)(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")


def is_quantized_layer(name: str) -> bool:
    return QUANTIZED_LAYER.search(name) is not None


@dataclass(frozen=True)
class QuantScheme:
    """What a checkpoint's quantization config says, reduced to what the loader needs."""

    format: str  # "awq-sym" | "awq-asym" | "ct-packed" | "ct-int" | "int8-stored" | "w8a8"
    group_size: int  # -1 = per output channel

    @property
    def tensor_suffixes(self) -> tuple[str, ...]:
        """Checkpoint tensors of one quantized layer (`<layer>.<suffix>`), bias aside."""
        return {"awq-sym": ("qweight", "scales", "qzeros"), "awq-asym": ("qweight", "scales", "qzeros"),
                "ct-packed": ("weight_packed", "weight_scale", "weight_shape")}.get(self.format,
                                                                                 ("weight", "weight_scale"))

    @property
    def required_suffixes(self) -> tuple[str, ...]:
        return tuple(s for s in self.tensor_suffixes if not (s == "qzeros" and self.format == "awq-sym"))

    def make_linear(self, in_features: int, out_features: int, bias: bool, use_triton: bool, device=None):
        """The module one quantized layer of this scheme loads into."""
        if self.format == "w8a8":
            return W8A8Linear(in_features, out_features, bias, use_triton, device)
        return W4A8Linear(in_features, out_features, self.group_size, bias, use_triton, device,
                          zero_points=self.format == "awq-asym")


def parse_quant_config(config: dict, where: str) -> QuantScheme:
    """Read `quantization_config` (or llmc's `compression_config`) of a config.json dict."""
    qc = config.get("quantization_config") or config.get("compression_config")
    if not qc:
        raise ValueError(f"{where}: no quantization_config or compression_config: not a quantized checkpoint "
                         "(quantize it first with `python -m adapters.quantize`)")
    method = qc.get("quant_method")
    if method == "awq":
        if qc.get("bits", 4) != 4:
            raise ValueError(f"{where}: quantization_config.bits={qc.get('bits')}, only 4-bit AWQ is supported")
        return QuantScheme("awq-asym" if qc.get("zero_point", True) else "awq-sym", int(qc.get("group_size", 128)))
    if method == "int8-stored":
        if qc.get("bits", 4) != 4:
            raise ValueError(f"{where}: int8-stored holds int4 values, got bits={qc.get('bits')}")
        return QuantScheme("int8-stored", int(qc.get("group_size", -1)))
    if method == "compressed-tensors":
        return _parse_compressed_tensors(qc, where)
    raise ValueError(f"{where}: quant_method {method!r} is not supported; choose awq, compressed-tensors "
                     "or int8-stored")


def _parse_compressed_tensors(qc: dict, where: str) -> QuantScheme:
    """A compressed-tensors config, read without the package: these adapters are also the gold
    ports, which run where a port runs (torch, triton, transformers, safetensors; CONTRACT.md).
    What compressed-tensors' own models write is read here (tests/adapters/test_interop.py)."""
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        raise ValueError(f"{where}: compressed-tensors config_groups must hold exactly one group, got {list(groups)}")
    group = next(iter(groups.values()))
    fmt = group.get("format") or qc.get("format")  # per group as 0.20 writes it; older writers: on top only
    weights = group.get("weights") or {}
    group_size = -1 if weights.get("strategy") == "channel" else int(weights.get("group_size") or -1)
    if weights.get("num_bits") == 8 and weights.get("symmetric", False) and fmt == "int-quantized":
        if group_size != -1:
            raise ValueError(f"{where}: 8-bit weights must be per channel (strategy: channel), got {weights}")
        return QuantScheme("w8a8", -1)
    if weights.get("num_bits") != 4 or not weights.get("symmetric", False) or weights.get("type", "int") != "int":
        raise ValueError(f"{where}: config_groups weights must be 4-bit symmetric integers (or 8-bit "
                         f"int-quantized), got {weights}")
    if fmt == "pack-quantized":
        return QuantScheme("ct-packed", group_size)
    if fmt == "int-quantized":
        return QuantScheme("ct-int", group_size)
    raise ValueError(f"{where}: compressed-tensors format {fmt!r} is not supported; "
                     "choose pack-quantized or int-quantized")


def quant_config(fmt: str, group_size: int) -> dict:
    """The `quantization_config` block `adapters.quantize` writes for `fmt`: what AutoAWQ writes
    (`to_transformers_dict`) for awq-sym, what llm-compressor writes for W4A8 for compressed-tensors."""
    if fmt == "awq-sym":
        return {"quant_method": "awq", "zero_point": False, "group_size": group_size, "bits": 4, "version": "gemm",
                "modules_to_not_convert": ["lm_head", "mlp.gate"]}
    if fmt == "compressed-tensors":
        return compressed_tensors_config(group_size)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def compressed_tensors_config(group_size: int) -> dict:
    """int4 symmetric weights (per channel or per group), int8 dynamic per-token activations, built
    and serialised by compressed-tensors itself, as `ModelCompressor.update_config` does."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    strategy = dict(strategy="channel") if group_size == -1 else dict(strategy="group", group_size=group_size)
    scheme = QuantizationScheme(
        targets=["Linear"], format="pack-quantized",
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, dynamic=False, **strategy),
        input_activations=QuantizationArgs(num_bits=8, type="int", symmetric=True, dynamic=True, strategy="token"))
    config = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized",
                                quantization_status="compressed",
                                # the head and the MoE routers (`mlp.gate`: a Linear in Ernie and
                                # in transformers 4.x Qwen3-MoE) keep their precision
                                ignore=["lm_head", "re:.*mlp.gate$"])
    return {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors", "sparsity_config": {},
            "transform_config": {}, **config.model_dump(mode="json", exclude={"quant_method"})}


def from_quantized(fmt: str, q: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """int4 q [N, K] and scales [N, G] -> the tensors `fmt` stores for one layer (by suffix).

    Scales are stored fp16 in both formats (AutoAWQ's dtype; bf16 would keep 3 fewer mantissa
    bits), so the two formats of one model dequantize to identical weights.
    """
    if fmt == "awq-sym":
        return {"qweight": pack_awq(q), "scales": scales.t().to(torch.float16).contiguous()}
    from compressed_tensors.compressors import pack_to_int32

    return {"weight_packed": pack_to_int32(q, 4), "weight_scale": scales.to(torch.float16).contiguous(),
            "weight_shape": torch.tensor(q.shape, dtype=torch.int64)}


def to_kernel(scheme: QuantScheme, layer: str, tensors: dict[str, torch.Tensor],
              in_features: int) -> dict[str, torch.Tensor]:
    """One layer's checkpoint tensors -> the buffers of its module (`scheme.make_linear`)."""
    fmt = scheme.format
    if fmt in ("awq-sym", "awq-asym"):
        zeros = unpack_nibbles_awq(tensors["qzeros"]).to(torch.int16) if "qzeros" in tensors else None
        if fmt == "awq-sym":
            if zeros is not None and not bool((zeros == 8).all()):
                raise ValueError(f"{layer}.qzeros: zero points other than 8 make this asymmetric AWQ, not awq-sym")
            packed, scales = repack_awq(tensors["qweight"], tensors["scales"])
            return {"qweight": packed, "scales": scales}
        q = unpack_awq(tensors["qweight"])  # stored - 8, [N, K]
        scales = tensors["scales"].to(torch.float32)  # [G, N]
        if zeros is None or zeros.shape != scales.shape:
            raise ValueError(f"{layer}.qzeros: need [{scales.shape[0]}, {scales.shape[1]}] zero points")
        group_size = -1 if scales.shape[0] == 1 else in_features // scales.shape[0]
        return {"qweight": pack_w4a8(q, group_size), "scales": scales.contiguous(),
                "zeros": ((zeros - 8) * scales).contiguous()}
    if fmt == "ct-packed":
        packed, scales = repack_ct(tensors["weight_packed"], tensors["weight_scale"], tensors["weight_shape"].tolist())
        return {"qweight": packed, "scales": scales}
    q, scale = tensors["weight"], tensors["weight_scale"]
    if q.dtype != torch.int8 or q.dim() != 2 or q.shape[1] != in_features:
        raise ValueError(f"{layer}.weight: need int8 [N, {in_features}], got {q.dtype} {tuple(q.shape)}")
    if fmt == "w8a8":
        return {"weight": q, "weight_scale": scale.reshape(-1).to(torch.float32)}
    if q.min() < -8 or q.max() > 7:
        raise ValueError(f"{layer}.weight: int4 values must lie in [-8, 7], got [{q.min()}, {q.max()}]")
    group_size = -1 if scale.shape[-1] == 1 else in_features // scale.shape[-1]
    return {"qweight": pack_w4a8(q, group_size), "scales": scales_to_kernel(scale)}

