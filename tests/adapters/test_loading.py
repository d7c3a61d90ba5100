"""Checkpoint formats, the load report, and the quantize / infer command lines."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters import qwen3, qwen3_moe
from adapters.formats import parse_quant_config
from adapters.loader import CheckpointError
from kernels import unpack_ct

from .test_adapters import load


def rewrite(src, dst, edit):
    """Copy checkpoint `src` to `dst`, passing its tensors through `edit(dict)`."""
    shutil.copytree(src, dst)
    shard = dst / "model.safetensors"
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard)
    return dst


def to_int_quantized(src, dst):
    """compressed-tensors pack-quantized -> its int-quantized variant (int4 values in int8)."""
    def edit(t):
        for key in [k for k in t if k.endswith(".weight_packed")]:
            layer = key.removesuffix(".weight_packed")
            t[f"{layer}.weight"] = unpack_ct(t.pop(key), int(t.pop(f"{layer}.weight_shape")[1]))
    rewrite(src, dst, edit)
    config = json.loads((dst / "config.json").read_text())
    qc = config["quantization_config"]
    for block in (qc, *qc["config_groups"].values()):  # the format is named per group and on top
        block["format"] = "int-quantized"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("family", ["qwen3", "qwen3_moe"])
def test_every_format_loads_to_the_same_logits(family, quant_dir, tmp_path):
    ids = torch.randint(0, 512, (1, 7))
    awq = load(family, quant_dir(family, "awq-sym"), use_triton=False)(ids).logits
    ct_dir = quant_dir(family, "compressed-tensors")
    ct = load(family, ct_dir, use_triton=False)(ids).logits
    int_q = load(family, to_int_quantized(ct_dir, tmp_path / "int"), use_triton=False)(ids).logits
    assert torch.equal(awq, ct) and torch.equal(awq, int_q)


@pytest.mark.parametrize("group_size", [-1, 32])
def test_group_sizes_round_trip_the_config(quant_dir, group_size):
    for fmt in ("awq-sym", "compressed-tensors"):
        path = quant_dir("qwen3", fmt, group_size)
        scheme = parse_quant_config(json.loads((path / "config.json").read_text()), "x")
        assert scheme.group_size == group_size
        assert qwen3.load_model(str(path), use_triton=False).load_report.ok


def test_kept_precision_tensors(quant_dir, tiny_dir):
    tensors = load_file(quant_dir("ernie4_5_moe") / "model.safetensors")
    assert "model.layers.1.mlp.gate.weight" in tensors and "lm_head.weight" not in tensors  # router kept, tied
    assert tensors["model.layers.1.mlp.moe_statics.e_score_correction_bias"].dtype == torch.float32
    assert "model.layers.1.mlp.shared_experts.gate_proj.qweight" in tensors
    assert "model.layers.1.mlp.experts.7.down_proj.qweight" in tensors
    assert "model.layers.0.mlp.gate_proj.qweight" in tensors  # layer 0 is dense
    model = load("ernie4_5_moe", quant_dir("ernie4_5_moe"))
    # transformers 5.x holds it at mlp.gate.moe_statics, 4.57 at mlp.moe_statics
    bias = next(t for name, t in model.named_parameters() if name.startswith("model.layers.1.")
                and name.endswith("e_score_correction_bias"))
    assert bias.dtype == torch.float32 and bias.abs().sum() > 0


def test_deleted_tensor_is_named(quant_dir, tmp_path):
    bad = rewrite(quant_dir("qwen3"), tmp_path / "bad", lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing: model\.layers\.1\.self_attn\.k_norm\.weight"):
        qwen3.load_model(str(bad), use_triton=False)


def test_renamed_tensor_is_named_both_ways(quant_dir, tmp_path):
    def rename(t):
        t["model.layers.0.self_attn.qnorm.weight"] = t.pop("model.layers.0.self_attn.q_norm.weight")
    bad = rewrite(quant_dir("qwen3"), tmp_path / "bad", rename)
    with pytest.raises(CheckpointError) as info:
        qwen3.load_model(str(bad), use_triton=False)
    assert "missing: model.layers.0.self_attn.q_norm.weight" in str(info.value)
    assert "unused: model.layers.0.self_attn.qnorm.weight" in str(info.value)


def test_wrong_shapes_are_named(quant_dir, tmp_path):
    def reshape(t):
        t["model.norm.weight"] = t["model.norm.weight"][:10]
        t["model.layers.1.mlp.experts.3.up_proj.qweight"] = t["model.layers.1.mlp.experts.3.up_proj.qweight"][:, :2].contiguous()
    bad = rewrite(quant_dir("qwen3_moe"), tmp_path / "bad", reshape)
    with pytest.raises(CheckpointError) as info:
        qwen3_moe.load_model(str(bad), use_triton=False)
    assert "mismatched: model.norm.weight: checkpoint (10,) vs model (64,)" in str(info.value)
    assert "model.layers.1.mlp.experts.3.up_proj" in str(info.value)


def test_missing_quantized_layer_and_bad_config(quant_dir, tiny_dir, tmp_path):
    bad = rewrite(quant_dir("qwen3"), tmp_path / "bad", lambda t: t.pop("model.layers.0.mlp.down_proj.qweight"))
    with pytest.raises(CheckpointError, match=r"missing: model\.layers\.0\.mlp\.down_proj\.qweight"):
        qwen3.load_model(str(bad), use_triton=False)
    with pytest.raises(ValueError, match="no quantization_config"):
        qwen3.load_model(str(tiny_dir("qwen3")))


def run_module(*args, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_quantize_and_infer_command_lines(tiny_dir, tmp_path):
    out = tmp_path / "q"
    done = run_module("adapters.quantize", "--model-dir", str(tiny_dir("ernie4_5")), "--out", str(out),
                      "--group-size", "64", "--format", "compressed-tensors")
    assert done.returncode == 0, done.stderr
    assert (out / "tokenizer.json").exists() and (out / "model.safetensors.index.json").exists()
    for flag in ("--no-triton", "--use-triton"):
        done = run_module("adapters.infer", "--model-dir", str(out), "--prompt", "Hello!", "--system", "Be brief.",
                          "--max-new-tokens", "6", flag)  # on a CPU, conftest's TRITON_INTERPRET=1 is inherited
        assert done.returncode == 0, done.stderr
        assert "tok/s decode" in done.stderr and ("triton" if flag == "--use-triton" else "torch") in done.stderr


def test_benchmark_smoke_run():
    from adapters import benchmark

    rows = benchmark.main(["--tiny", "--device", "cpu", "--variants", "w4a8-torch,bf16"])
    by = {(r["model"], r["variant"]): r for r in rows}
    for model in ("qwen3", "qwen3_moe"):
        assert by[(model, "w4a8-torch")]["weight_GiB"] < by[(model, "bf16")]["weight_GiB"]
        assert all(by[(model, v)]["decode_b2_tok_s"] > 0 for v in ("w4a8-torch", "bf16"))
