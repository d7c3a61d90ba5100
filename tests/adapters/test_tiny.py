"""The tiny checkpoints exercise every quirk they promise."""

import json

import pytest
from transformers import AutoTokenizer

from adapters import tiny


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_config_quirks(family, tiny_dir):
    config = json.loads((tiny_dir(family) / "config.json").read_text())
    assert config["num_attention_heads"] * config["head_dim"] != config["hidden_size"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]


def test_ernie_moe_has_a_dense_first_layer_and_shared_experts(tiny_dir):
    config = json.loads((tiny_dir("ernie4_5_moe") / "config.json").read_text())
    assert config["moe_layer_start_index"] == 1 and config["moe_num_shared_experts"] == 2


def test_tokenizer_applies_the_chat_template(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir("qwen3"))
    text = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text).input_ids
    assert max(ids) < tiny.VOCAB_SIZE and tok.decode(ids) == text


def test_bad_family_or_tier():
    with pytest.raises(ValueError, match="unknown family 'llama'"):
        tiny.make_config("llama")
    with pytest.raises(ValueError, match="unknown tier"):
        tiny.make_config("qwen3", "gpu")
