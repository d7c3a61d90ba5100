"""The other checkpoint formats the loader reads: asymmetric AutoAWQ, int8-stored and W8A8."""

import json

import torch

from kernels.packing import pack_nibbles_awq

from .test_adapters import assert_matches_fake_quant_reference, load
from .test_loading import rewrite, to_int_quantized


def set_quant_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


def write_asymmetric_awq(src_dir, dst_dir, group_size=32):
    """AutoAWQ asymmetric packing of a bf16 checkpoint: s = (max - min) / 15, z = round(-min / s)."""
    def edit(tensors):
        for key in [k for k in tensors if k.endswith("proj.weight") and "mlp.gate." not in k]:
            w = tensors.pop(key).float()
            n, k = w.shape
            wg = w.reshape(n, k // group_size, group_size)
            lo, hi = wg.amin(-1), wg.amax(-1)
            scale = ((hi - lo) / 15).clamp(min=1e-8).half().float()
            zero = torch.round(-lo / scale).clamp(0, 15)
            q = torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], 0, 15).reshape(n, k)
            layer = key.removesuffix(".weight")
            tensors[f"{layer}.qweight"] = pack_nibbles_awq(q.t().to(torch.uint8))
            tensors[f"{layer}.qzeros"] = pack_nibbles_awq(zero.t().to(torch.uint8))
            tensors[f"{layer}.scales"] = scale.t().half().contiguous()
    dst = rewrite(src_dir, dst_dir, edit)
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size,
                                     "zero_point": True, "version": "gemm"}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_asymmetric_awq_matches_its_fake_quant_reference(tiny_dir, device, tmp_path):
    path = write_asymmetric_awq(tiny_dir("qwen3_moe"), tmp_path / "asym")
    assert_matches_fake_quant_reference("qwen3_moe", tiny_dir("qwen3_moe"), path, device)


def test_zero_points_of_8_are_the_symmetric_format(quant_dir, tmp_path):
    def add_zeros(tensors):
        for key in [k for k in tensors if k.endswith(".scales")]:
            groups, n = tensors[key].shape
            tensors[key.replace(".scales", ".qzeros")] = pack_nibbles_awq(torch.full((groups, n), 8, dtype=torch.uint8))
    sym = quant_dir("qwen3")
    for zero_point in (False, True):  # awq-sym accepts qzeros == 8; asymmetric with z = 8 is the same model
        path = set_quant_config(rewrite(sym, tmp_path / f"z{zero_point}", add_zeros), zero_point=zero_point)
        ids = torch.randint(0, 512, (1, 7))
        assert torch.equal(load("qwen3", path, use_triton=False)(ids).logits,
                           load("qwen3", sym, use_triton=False)(ids).logits)


def test_int8_stored_loads_like_int_quantized(quant_dir, tmp_path):
    int_dir = to_int_quantized(quant_dir("ernie4_5", "compressed-tensors"), tmp_path / "int")
    stored = tmp_path / "stored"
    stored.mkdir()
    for f in int_dir.iterdir():
        (stored / f.name).write_bytes(f.read_bytes())
    config = json.loads((stored / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "int8-stored", "bits": 4, "group_size": 32}
    (stored / "config.json").write_text(json.dumps(config))
    ids = torch.randint(0, 512, (1, 7))
    assert torch.equal(load("ernie4_5", stored, use_triton=False)(ids).logits,
                       load("ernie4_5", int_dir, use_triton=False)(ids).logits)


def test_w8a8_checkpoint_runs_through_the_w8a8_kernel(tiny_dir, device, tmp_path):
    def to_int8(tensors):
        for key in [k for k in tensors if k.endswith("proj.weight")]:
            w = tensors[key].float()
            scale = w.abs().amax(-1, keepdim=True) / 127
            tensors[key] = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
            tensors[key.replace(".weight", ".weight_scale")] = scale.to(torch.bfloat16)
    path = rewrite(tiny_dir("ernie4_5_moe"), tmp_path / "w8a8", to_int8)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "int-quantized",
                                     "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                                         "num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}}}}
    (path / "config.json").write_text(json.dumps(config))
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_dir("ernie4_5_moe"), dtype=torch.float32)
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        ref = original(ids).logits
        outs = [load("ernie4_5_moe", path, device, t)(ids.to(device)).logits.cpu() for t in (True, False)]
    assert type(load("ernie4_5_moe", path).model.layers[0].mlp.down_proj).__name__ == "W8A8Linear"
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    assert ((outs[0] - ref).norm() / ref.norm()).item() < 0.05  # 8-bit weights: near lossless
