"""The fp32 fake-quant reference the adapters are checked against.

The transformers model of the original checkpoint, in fp32, with every quantized weight
replaced by its dequantized int4 value read from the quantized checkpoint, and the input of
every quantized linear (experts included) fake-quantized per token (x -> round(x / s) * s).
Routers, norms, embeddings and attention math stay transformers' own.
"""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForCausalLM

from adapters.formats import is_quantized_layer, parse_quant_config, to_kernel
from kernels import per_token_quant_int8_ref, unpack_w4a8


def fake_quant(x: torch.Tensor) -> torch.Tensor:
    x_q, scale = per_token_quant_int8_ref(x.reshape(-1, x.shape[-1]))
    return (x_q.float() * scale).reshape(x.shape).to(x.dtype)


def _dequantized_layers(quant_dir: Path) -> dict[str, torch.Tensor]:
    scheme = parse_quant_config(json.loads((quant_dir / "config.json").read_text()), "reference")
    tensors = {}
    for shard in quant_dir.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    layers = {k.rpartition(".")[0] for k in tensors if k.endswith(scheme.tensor_suffixes[0])}
    out = {}
    for layer in layers:
        parts = {s: tensors[f"{layer}.{s}"] for s in scheme.tensor_suffixes if f"{layer}.{s}" in tensors}
        in_features = (parts["weight_shape"][1].item() if "weight_shape" in parts
                       else parts["qweight"].shape[0] if "qweight" in parts else parts["weight"].shape[1])
        buffers = to_kernel(scheme, layer, parts, in_features)
        q = unpack_w4a8(buffers["qweight"], in_features).float()  # [N, K]
        scales = buffers["scales"]
        w = q.reshape(q.shape[0], scales.shape[0], -1) * scales.t()[..., None]
        if "zeros" in buffers:  # asymmetric AWQ: W = (q - zo) * s
            w = w - buffers["zeros"].t()[..., None]
        out[layer] = w.reshape(q.shape)
    return out


def _reference_experts_forward(experts: nn.Module):
    def forward(hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        x = fake_quant(hidden_states)
        for t in range(hidden_states.shape[0]):
            for slot in range(top_k_index.shape[1]):
                e = int(top_k_index[t, slot])
                gate, up = (x[t] @ experts.gate_up_proj[e].t()).chunk(2)
                h = fake_quant((experts.act_fn(gate) * up)[None])[0]
                out[t] += top_k_weights[t, slot] * (h @ experts.down_proj[e].t())
        return out
    return forward


@torch.no_grad()
def build_reference(orig_dir: Path, quant_dir: Path) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(orig_dir, dtype=torch.float32)
    deq = _dequantized_layers(Path(quant_dir))
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_quantized_layer(name):
            module.weight.copy_(deq[name])
            module.register_forward_pre_hook(lambda _m, args: (fake_quant(args[0]),) + args[1:])
        elif hasattr(module, "gate_up_proj") and name.endswith("experts"):
            for e in range(module.gate_up_proj.shape[0]):
                module.gate_up_proj[e].copy_(torch.cat([deq[f"{name}.{e}.gate_proj"], deq[f"{name}.{e}.up_proj"]]))
                module.down_proj[e].copy_(deq[f"{name}.{e}.down_proj"])
            module.forward = _reference_experts_forward(module)
    return model.eval()
