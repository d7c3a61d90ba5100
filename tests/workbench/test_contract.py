"""What the model tasks tell an agent is what their fixtures, vendored sources and checks are.

The contract and the prompts are text written by hand; these tests hold them to the files they
describe, so that an agent is never told something the checkpoint or the checks contradict (a
port once had to guess past a prompt saying theta 1e6 over a config with 1e4, and a contract
naming a `format` key the awq checkpoint does not have).
"""

import re
from pathlib import Path

import pytest
import yaml

from adapters import tiny
from adapters.formats import quant_config
from workbench.checks import model_checks
from workbench.tasks import load_task
from workbench.tasks.prompt import agent_prompt, checkpoint_facts

REPO = Path(__file__).resolve().parents[2]
CONTRACT = (REPO / "tasks/common/model_start/CONTRACT.md").read_text()
MODEL_TASKS = sorted(p for p in (REPO / "tasks").glob("*.yaml") if load_task(p).fixture is not None)


def contract_bullet(start: str) -> str:
    """The contract's bullet that begins with `start`, continuation lines included."""
    match = re.search(rf"^- {re.escape(start)}.*?(?=^- |^\n|\Z)", CONTRACT, re.M | re.S)
    assert match, f"CONTRACT.md has no bullet starting {start!r}"
    return match.group(0)


def stated_pairs(text: str) -> list[tuple[str, object]]:
    """The `key: value` pairs a contract bullet states in backticks."""
    return [(k, yaml.safe_load(v)) for k, v in re.findall(r"`([a-z_]+): ([^`]+)`", text)]


def flatten(config: dict) -> dict[str, list]:
    found: dict[str, list] = {}
    stack = [config]
    while stack:
        node = stack.pop()
        for key, value in node.items():
            if isinstance(value, dict):
                stack.append(value)
            else:
                found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("fmt,bullet", [("awq-sym", "awq-sym, written as AutoAWQ"),
                                         ("compressed-tensors", "compressed-tensors, written as llm-compressor")])
def test_contract_states_what_the_quantizer_writes(fmt, bullet):
    pairs = stated_pairs(contract_bullet(bullet))
    assert len(pairs) >= 4
    for group_size in (-1, 32):
        written = flatten(quant_config(fmt, group_size))
        for key, value in pairs:
            if key == "strategy":  # the contract names both strategies; the config has one
                continue
            assert value in written.get(key, []), f"CONTRACT.md says `{key}: {value}` for {fmt}; written: {written}"
    strategies = {v for k, v in pairs if k == "strategy"}
    written = {v for g in (-1, 32) for v in flatten(quant_config(fmt, g)).get("strategy", [])}
    assert strategies <= written
    if fmt == "compressed-tensors":  # weights per channel or group, activations per token
        assert strategies == written == {"channel", "group", "token"}


def test_contract_states_the_check_defaults():
    words = " ".join(CONTRACT.split())
    assert f"within {model_checks.PADDED_RTOL:.0%}" in words
    assert f"within {model_checks.ROUTER_TIE:.0%} of a tie" in words
    assert f"{model_checks.DEFAULT_NEW_TOKENS} new tokens" in words
    assert f"batches of 1-{model_checks.DEFAULT_PROMPTS_SHAPE[0]} rows" in words


@pytest.mark.parametrize("path", MODEL_TASKS, ids=lambda p: p.stem)
def test_prompt_names_what_the_workspace_holds(path, tmp_path):
    spec = load_task(path)
    # the vendored modeling code is the release the prompt names
    pins = [s.pip for s in spec.sources if getattr(s, "pip", "").startswith("transformers==")]
    assert len(pins) == 1 and f"transformers {pins[0].split('==')[1]} modeling code" in spec.prompt
    # the format and group size are generated from the fixture and the sample's config, not written
    assert "awq-sym" not in spec.prompt and "compressed-tensors" not in spec.prompt and "group size" not in spec.prompt
    sample = tmp_path / spec.fixture.sample
    sample.mkdir(parents=True)
    method = quant_config(spec.fixture.format, spec.fixture.group_size)["quant_method"]
    (sample / "config.json").write_text(f'{{"quantization_config": {{"quant_method": "{method}"}}}}')
    facts = checkpoint_facts(spec, tmp_path)
    assert f"the {spec.fixture.format} format" in facts and f"quant_method: {method}" in facts
    # the hints' numbers are the fixture family's real values
    values = tiny.FAMILY_VALUES[spec.fixture.family]
    for theta in re.findall(r"theta (\S+?)[.;,]?(?:\s|$)", spec.hints):
        assert float(theta) == values["rope_theta"], (path.name, theta)
    assert spec.hints and spec.hints.strip() in agent_prompt(spec, tmp_path, "full")
    assert spec.hints.strip() not in agent_prompt(spec, tmp_path, "none")


def test_a_missing_sample_config_is_named(tmp_path):
    spec = load_task(MODEL_TASKS[0])
    with pytest.raises(ValueError, match=r"checkpoints/tiny/config.json: the task's sample checkpoint"):
        checkpoint_facts(spec, tmp_path)
