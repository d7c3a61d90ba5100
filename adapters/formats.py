"""Checkpoint formats: which layers are quantized, how each format names and packs them.

Formats (../shared/ARCHITECTURE.md, "Checkpoint formats"):
- `awq-sym`: `<layer>.qweight` int32 [K, N/8] (AutoAWQ GEMM order, stored q + 8) and
  `<layer>.scales` fp16 [G, N]; no qzeros (qzeros all 8 are accepted). config
  `quantization_config: {quant_method: awq, bits: 4, group_size, zero_point: false, version: gemm}`.
- `compressed-tensors` pack-quantized: `<layer>.weight_packed` int32 [N, K/8], `.weight_scale`
  [N, G], `.weight_shape` int64 [2]; its `int-quantized` variant stores int4 values unpacked in
  an int8 `<layer>.weight`. Config under `quantization_config` or (llmc) `compression_config`.
Every format is turned into the kernel layout once, at load time (`to_kernel`).
"""

import re
from dataclasses import dataclass

import torch

from kernels.packing import pack_awq, pack_ct, pack_w4a8, repack_awq, repack_ct, scales_to_kernel, unpack_nibbles_awq

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

    format: str  # "awq-sym" | "ct-packed" | "ct-int"
    group_size: int  # -1 = per output channel

    @property
    def tensor_suffixes(self) -> tuple[str, ...]:
        return {"awq-sym": ("qweight", "scales", "qzeros"),
                "ct-packed": ("weight_packed", "weight_scale", "weight_shape"),
                "ct-int": ("weight", "weight_scale")}[self.format]


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
        if qc.get("zero_point", True):
            raise ValueError(f"{where}: quantization_config.zero_point=true (asymmetric AutoAWQ) is not supported "
                             "yet; re-quantize symmetric with `python -m adapters.quantize --format awq-sym`")
        return QuantScheme("awq-sym", int(qc.get("group_size", 128)))
    if method == "compressed-tensors":
        fmt = qc.get("format")
        groups = qc.get("config_groups") or {}
        if len(groups) != 1:
            raise ValueError(f"{where}: compressed-tensors config_groups must hold exactly one group, got {list(groups)}")
        weights = next(iter(groups.values())).get("weights") or {}
        if weights.get("num_bits") != 4 or not weights.get("symmetric", False):
            raise ValueError(f"{where}: config_groups weights must be 4-bit symmetric, got {weights}")
        group_size = -1 if weights.get("strategy") == "channel" else int(weights.get("group_size") or -1)
        if fmt == "pack-quantized":
            return QuantScheme("ct-packed", group_size)
        if fmt == "int-quantized":
            return QuantScheme("ct-int", group_size)
        raise ValueError(f"{where}: compressed-tensors format {fmt!r} is not supported; "
                         "choose pack-quantized or int-quantized")
    raise ValueError(f"{where}: quant_method {method!r} is not supported; choose awq or compressed-tensors")


def quant_config(fmt: str, group_size: int) -> dict:
    """The `quantization_config` block `adapters.quantize` writes for `fmt`."""
    if fmt == "awq-sym":
        return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": False, "version": "gemm",
                "modules_to_not_convert": ["lm_head", "mlp.gate"], "activations": "int8 per-token dynamic symmetric"}
    if fmt == "compressed-tensors":
        strategy = {"strategy": "channel"} if group_size == -1 else {"strategy": "group", "group_size": group_size}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized",
                "config_groups": {"group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 4, "type": "int", "symmetric": True, "dynamic": False, **strategy},
                    "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                          "dynamic": True}}},
                "ignore": ["lm_head", "re:.*mlp.gate$"]}
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def from_quantized(fmt: str, q: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """int4 q [N, K] and scales [N, G] -> the tensors `fmt` stores for one layer (by suffix).

    Scales are stored fp16 in both formats (AutoAWQ's dtype; bf16 would keep 3 fewer mantissa
    bits), so the two formats of one model dequantize to identical weights.
    """
    if fmt == "awq-sym":
        return {"qweight": pack_awq(q), "scales": scales.t().to(torch.float16).contiguous()}
    return {"weight_packed": pack_ct(q), "weight_scale": scales.to(torch.float16).contiguous(),
            "weight_shape": torch.tensor(q.shape, dtype=torch.int64)}


def to_kernel(scheme: QuantScheme, layer: str, tensors: dict[str, torch.Tensor],
              in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's checkpoint tensors -> kernel layout (packed int8 [N, K_pad/2], scales fp32 [G, N])."""
    if scheme.format == "awq-sym":
        qzeros = tensors.get("qzeros")
        if qzeros is not None and not bool((unpack_nibbles_awq(qzeros) == 8).all()):
            raise ValueError(f"{layer}.qzeros: zero points other than 8 make this asymmetric AWQ, not awq-sym")
        return repack_awq(tensors["qweight"], tensors["scales"])
    if scheme.format == "ct-packed":
        return repack_ct(tensors["weight_packed"], tensors["weight_scale"], tensors["weight_shape"].tolist())
    q = tensors["weight"]
    if q.dtype != torch.int8 or q.shape[1] != in_features:
        raise ValueError(f"{layer}.weight: int-quantized needs int8 [N, {in_features}], got {q.dtype} {tuple(q.shape)}")
    scale = tensors["weight_scale"]
    group_size = -1 if scale.shape[-1] == 1 else in_features // scale.shape[-1]
    return pack_w4a8(q, group_size), scales_to_kernel(scale)
