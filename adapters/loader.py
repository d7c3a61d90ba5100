"""Build a transformers model with W4A8 layers and stream a quantized checkpoint into it.

The model is built on the `meta` device (nothing allocated), its quantized linears and fused
experts are swapped for buffer-only W4A8 modules, and each checkpoint tensor is read, repacked
into the kernel layout if quantized, moved to the device and assigned in place. Peak host
memory is one shard's tensors, not the model.

The returned `LoadReport` lists checkpoint tensors nothing read, model tensors nothing loaded,
and shape or dtype mismatches; `CheckpointError` (raised for any missing or mismatched tensor)
names them and the checkpoint directory.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn

from kernels import W4A8Linear, W8A8Linear

from .formats import QuantScheme, is_quantized_layer, parse_quant_config, to_kernel
from .moe import W4A8Experts
from .quantize import list_shards


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: the message names every offending tensor."""


@dataclass
class LoadReport:
    unused: list[str] = field(default_factory=list)  # in the checkpoint, read by nothing
    missing: list[str] = field(default_factory=list)  # in the model, never loaded
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint ... vs model ..."

    @property
    def ok(self) -> bool:
        return not (self.unused or self.missing or self.mismatched)

    def raise_for_errors(self, where: str) -> None:
        if self.missing or self.mismatched:
            lines = [f"{where}: checkpoint does not fit the model"]
            lines += [f"  mismatched: {text}" for text in self.mismatched]
            lines += [f"  missing: {name}" for name in self.missing]
            lines += [f"  unused: {name}" for name in self.unused]
            raise CheckpointError("\n".join(lines))


def swap_quantized_modules(model: nn.Module, config, scheme: QuantScheme, use_triton: bool) -> set[str]:
    """Replace quantized nn.Linear and fused-expert modules by quantized ones (on meta); return
    the names of the quantized linears (experts' included)."""
    def make_linear(name, in_features, out_features, bias):
        try:
            return scheme.make_linear(in_features, out_features, bias, use_triton, "meta")
        except ValueError as err:
            raise CheckpointError(f"layer {name}: {err}") from err

    for name, module in list(model.named_modules()):
        parent_name, _, child = name.rpartition(".")
        if isinstance(module, nn.Linear) and is_quantized_layer(name):
            new = make_linear(name, module.in_features, module.out_features, module.bias is not None)
        elif hasattr(module, "gate_up_proj") and hasattr(module, "down_proj") and name.endswith("experts"):
            num_experts, two_i, hidden = module.gate_up_proj.shape
            new = W4A8Experts(num_experts, hidden, two_i // 2, config.hidden_act,
                              lambda i, o, name=name: make_linear(name, i, o, False))
        else:
            continue
        setattr(model.get_submodule(parent_name), child, new)
    return {name for name, m in model.named_modules() if isinstance(m, (W4A8Linear, W8A8Linear))}


def assign_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the (meta) parameter or buffer `name`."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def load_quantized(model_dir: str | Path, model_cls: type, device: str | torch.device = "cpu",
                   use_triton: bool = True, dtype: torch.dtype = torch.bfloat16,
                   keep_fp32: tuple[str, ...] = (),
                   renames: tuple[tuple[str, str], ...] = ()) -> tuple[nn.Module, LoadReport]:
    """Load a W4A8 checkpoint into `model_cls` (an HF *ForCausalLM class).

    keep_fp32: name fragments of float tensors kept in fp32 (e.g. Ernie's router and
    e_score_correction_bias); every other float tensor is cast to `dtype`.
    renames: (checkpoint fragment, model fragment) pairs for keys that transformers renames on
    load (e.g. Ernie-MoE's `mlp.moe_statics` lives at `mlp.gate.moe_statics` in the module).
    """
    root = Path(model_dir)
    config_path = root / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{root}: no config.json (not a checkpoint directory)")
    scheme: QuantScheme = parse_quant_config(json.loads(config_path.read_text()), str(config_path))
    config = transformers.AutoConfig.from_pretrained(root)
    with torch.device("meta"):
        model = model_cls(config)
    layers = swap_quantized_modules(model, config, scheme, use_triton)
    expected = dict(model.state_dict(keep_vars=True))
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    report = LoadReport()
    loaded: set[str] = set()
    pending: dict[str, dict[str, torch.Tensor]] = {}  # quantized layers whose tensors are being read

    placed: set[str] = set()  # quantized layers read in full (loaded or reported mismatched)

    def place(layer: str, tensors: dict[str, torch.Tensor]) -> None:
        placed.add(layer)
        module = model.get_submodule(layer)
        try:
            buffers = to_kernel(scheme, layer, tensors, module.in_features)
        except ValueError as err:
            report.mismatched.append(f"{layer}: {err}")
            return
        wrong = {k: tuple(v.shape) for k, v in buffers.items() if v.shape != getattr(module, k).shape}
        if wrong:
            want = {k: tuple(getattr(module, k).shape) for k in wrong}
            report.mismatched.append(f"{layer}: checkpoint gives {wrong}; model wants {want} "
                                     f"(in {module.in_features}, out {module.out_features})")
            return
        for attr, t in buffers.items():
            assign_tensor(model, f"{layer}.{attr}", t.to(device))
            loaded.add(f"{layer}.{attr}")

    for shard in list_shards(root):
        with safe_open(shard, framework="pt") as f:
            for ckpt_key in f.keys():
                key = ckpt_key
                for old, new in renames:  # only where this transformers version moved the tensor
                    moved = key.replace(old, new)
                    if moved != key and moved in expected and key not in expected:
                        key = moved
                layer, _, suffix = key.rpartition(".")
                if layer in layers and suffix in scheme.tensor_suffixes:
                    pending.setdefault(layer, {})[suffix] = f.get_tensor(ckpt_key)
                    continue
                if key not in expected:
                    report.unused.append(ckpt_key)
                    continue
                t = f.get_tensor(ckpt_key)
                want = expected[key]
                if tuple(t.shape) != tuple(want.shape):
                    report.mismatched.append(f"{key}: checkpoint {tuple(t.shape)} vs model {tuple(want.shape)}")
                    loaded.add(key)  # reported as mismatched, not again as missing
                    continue
                if t.is_floating_point():
                    t = t.to(torch.float32 if any(s in key for s in keep_fp32) else dtype)
                assign_tensor(model, key, t.to(device))
                loaded.add(key)
        # Place the layers this shard completed; a layer split across shards waits for the rest.
        # Host memory stays at about one shard.
        for layer in [name for name, ts in pending.items() if all(s in ts for s in scheme.required_suffixes)]:
            place(layer, pending.pop(layer))
    for layer, tensors in pending.items():
        report.missing += [f"{layer}.{s}" for s in scheme.required_suffixes if s not in tensors]
    report.missing += sorted(name for name in expected if name not in loaded
                             and (name.rpartition(".")[0] not in layers or name.endswith(".bias")))
    report.missing += sorted(f"{layer}.{s}" for layer in layers - pending.keys() - placed
                             for s in scheme.required_suffixes)
    report.raise_for_errors(str(root))
    finish_model(model, config, device)
    return model, report


def finish_model(model: nn.Module, config, device) -> None:
    """Tie embeddings, rebuild the rotary tables (non-persistent buffers) on the device, eval mode."""
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    leftovers = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    assert not leftovers, f"tensors left on meta after load: {leftovers}"
    model.eval()


def synchronize(device: str | torch.device) -> None:
    """Wait for the device, so host timers measure finished work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
