"""adapters.tune off a GPU: the model forwards it runs at every M (the interpreter times nothing,
so no key is tuned), and its refusals. The timing itself runs on a GPU (README, "Fast decode")."""

import pytest
import torch
from rich.console import Console

from adapters import tune


def test_tune_runs_every_model_at_every_m_and_times_nothing_off_a_gpu(tiny_dir, monkeypatch):
    monkeypatch.setenv("WB_AUTOTUNE", "1")  # restored after the test: tune() sets it to force
    console = Console(record=True, width=120)
    tuned = tune.tune([str(tiny_dir("qwen3")), str(tiny_dir("ernie4_5_moe"))], (1, 3), 32, console, device="cpu")
    assert tuned == {}
    assert "4/4" in console.export_text()  # two models x two M values, each forward run


def test_model_config_takes_presets_and_checkpoints_cut_to_two_layers(tiny_dir, quant_dir):
    config, group = tune.model_config("qwen3-32b", 128)
    assert (config.hidden_size, config.num_hidden_layers, group) == (5120, 2, 128)
    assert tune.model_config(str(tiny_dir("ernie4_5_moe")), 64)[0].num_hidden_layers == 2
    assert tune.model_config(str(quant_dir("qwen3", group_size=32)), 128)[1] == 32  # the checkpoint's own
    with pytest.raises(SystemExit, match="neither a preset"):
        tune.model_config("qwen3-9b", 128)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without a CUDA GPU (on one, tune runs)")
def test_tune_refuses_without_a_gpu():
    with pytest.raises(SystemExit, match="CUDA GPU"):
        tune.main(["--models", "qwen3-8b"])
