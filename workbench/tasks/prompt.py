"""The task prompt as the agent reads it: the task's own text, its hints when the run asks for
them, and facts generated from what the attempt's tree really holds (the sample checkpoint's
format and config, the installed releases), so that the prompt cannot drift from the fixture
or from the environment the checks run in.

`hints: full` hands the agent the model's quirks (q_norm/k_norm, head_dim, rope layout, theta):
the very knowledge a port needs and an agent may lack, so comparisons run with `none`, the
default; the contract states the API, numerics and layouts either way.
"""

import json
from pathlib import Path
from typing import Literal, get_args

from .sources import RUNTIME, installed_release
from .spec import TaskSpec

Hints = Literal["none", "full"]
HINTS = get_args(Hints)


def installed(names: tuple[str, ...] = RUNTIME) -> str:
    """`torch 2.13.0, triton 3.6.0, ...` for the releases of this environment."""
    return ", ".join(f"{name} {installed_release(name) or '(not installed)'}" for name in names)


def checkpoint_facts(spec: TaskSpec, tree: Path) -> str | None:
    """One sentence on the sample checkpoint, from the fixture spec and the file itself."""
    if spec.fixture is None:
        return None
    fixture, config_path = spec.fixture, Path(tree) / spec.fixture.sample / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{config_path}: the task's sample checkpoint has no readable config ({err})") from err
    method = (config.get("quantization_config") or {}).get("quant_method", "?")
    grouping = "per output channel" if fixture.group_size == -1 else f"groups of {fixture.group_size} along K"
    return (f"The checkpoint in `{fixture.sample}/` is in the {fixture.format} format of CONTRACT.md "
            f"(`quantization_config.quant_method: {method}`), scales {grouping}.")


def agent_prompt(spec: TaskSpec, tree: Path, hints: Hints = "none") -> str:
    """The first user message of an attempt on `spec` whose worktree is `tree`."""
    if hints not in HINTS:
        raise ValueError(f"hints must be one of {HINTS}, got {hints!r}")
    parts = [spec.prompt.strip()]
    if facts := checkpoint_facts(spec, tree):
        parts.append(facts)
    if hints == "full" and spec.hints:
        parts.append(spec.hints.strip())
    parts.append(f"Installed, for your port and for the checks: {installed()}.")
    return "\n\n".join(parts)
