"""The task spec: a small declarative YAML file, validated with errors that name the file, the
line and the field (and the valid choices).

    id: qwen3_w4a8
    title: Port Qwen3 to W4A8 Triton inference
    target: w4a8_inference.qwen3          # module the agent delivers
    reference: adapters.qwen3             # known-good adapter the checks compare against
    sources:
      - {pip: "sglang==0.4.4", files: ["sglang/srt/layers/quantization/int8_kernel.py"], to: vendor/sglang}
      - {dir: tasks/qwen3_w4a8/start, to: .}
      - {git: https://github.com/huggingface/transformers, ref: v4.57.1, files: ["src/transformers/models/qwen3/*.py"], to: vendor/transformers}
    prompt: |
      ...markdown...
    hints: |                              # handed out only with `workbench run --hints full`
      Qwen3 quirks: ...
    checks:
      - {kind: import}
      - {kind: numerics, rtol: 0.02}
    budget: {turns: 40, check_rounds: 6, tokens: 2000000, usd: 5, wall_minutes: 60}
    device: cpu
    fixture: {family: qwen3, format: awq-sym, group_size: 32}   # tiny checkpoint (sample + hidden)
    solution: {dir: tasks/qwen3_w4a8/solution, vendor: w4a8_inference/_gold}   # never shown to the agent
"""

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

CHECK_KINDS = ("import", "shapes", "weight_load", "deterministic_output", "numerics", "w4a8_execution", "kernel_numerics",
               "kernel_perf", "no_forbidden_imports", "protected_paths", "pytest", "command")


class TaskSpecError(ValueError):
    """A task file that does not validate; the message names file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipSource(_Strict):
    pip: str = Field(description="a pinned requirement, e.g. 'sglang==0.4.4' (wheel or sdist, no deps)")
    files: list[str] = Field(min_length=1, description="globs inside the distribution to copy")
    to: str = Field(".", description="folder in the workspace")
    find_links: str | None = Field(None, description="a local folder or mirror to download from")


class DirSource(_Strict):
    dir: str = Field(description="a folder of this repository, relative to its root")
    files: list[str] = Field(["**/*"], description="globs inside the folder to copy")
    to: str = "."


class GitSource(_Strict):
    git: str = Field(description="a repository URL or local path")
    ref: str = Field(description="a tag, branch or commit")
    files: list[str] = Field(min_length=1)
    to: str = "."


SOURCE_KEYS = ("pip", "dir", "git")


def _source_kind(value: Any) -> str | None:
    keys = value if isinstance(value, dict) else vars(value)
    return next((k for k in SOURCE_KEYS if k in keys), None)


Source = Annotated[
    Union[Annotated[PipSource, Tag("pip")], Annotated[DirSource, Tag("dir")], Annotated[GitSource, Tag("git")]],
    Discriminator(_source_kind, custom_error_type="source_kind",
                  custom_error_message="a source needs one of the keys pip:, dir:, git:"),
]


class CheckSpec(BaseModel):
    """One acceptance check: `kind` plus its own parameters."""

    model_config = ConfigDict(extra="allow")
    kind: Literal[CHECK_KINDS]  # type: ignore[valid-type]
    name: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Budget(_Strict):
    turns: int = Field(40, gt=0, description="agent turns (model calls)")
    check_rounds: int = Field(6, gt=0, description="times the acceptance checks run")
    tokens: int = Field(2_000_000, gt=0, description="prompt + completion tokens")
    usd: float = Field(10.0, gt=0, description="money at the model's prices")
    wall_minutes: float = Field(60.0, gt=0)


FAMILIES = ("qwen3", "qwen3_moe", "ernie4_5", "ernie4_5_moe")


class Fixture(_Strict):
    """The tiny W4A8 checkpoint of a model task. The workspace gets one made with a public seed
    (`sample`); the checks use one made with a seed the agent never sees."""

    family: Literal[FAMILIES]  # type: ignore[valid-type]
    tier: Literal["cpu", "triton"] = "cpu"
    format: Literal["awq-sym", "compressed-tensors"] = "awq-sym"
    group_size: Literal[-1, 32, 64, 128] = 32
    sample: str = Field("checkpoints/tiny", description="folder in the workspace for the sample checkpoint")


class Solution(_Strict):
    """The gold port: a small overlay folder, plus the repository's `adapters` and `kernels`
    vendored into the port's package when it is applied (so their source lives once, here)."""

    dir: str = Field(description="overlay folder of this repository, e.g. tasks/<id>/solution")
    vendor: str | None = Field(None, description="workspace folder that receives adapters/ and kernels/, "
                                                 "imports rewritten, e.g. w4a8_inference/_gold")


class TaskSpec(_Strict):
    id: str = Field(pattern=r"^[a-z0-9_]+$")
    title: str
    target: str = Field(description="module the agent delivers, e.g. w4a8_inference.qwen3")
    reference: str = Field(description="module of the known-good answer, e.g. adapters.qwen3")
    sources: list[Source] = Field(min_length=1)
    prompt: str
    hints: str = Field("", description="the model's quirks, in the prompt only for runs with --hints full")
    checks: list[CheckSpec] = Field(min_length=1)
    budget: Budget = Budget()
    device: Literal["cpu", "cuda"] = "cpu"
    fixture: Fixture | None = Field(None, description="tiny checkpoint of a model task")
    solution: Solution | None = None
    path: Path | None = Field(None, exclude=True, description="where the spec was read from (set by load_task)")

    @property
    def repo_root(self) -> Path:
        """The repository the spec's `dir:` and `solution:` paths are relative to."""
        assert self.path is not None, "TaskSpec.repo_root needs a spec read with load_task"
        return self.path.resolve().parent.parent


def _line_of(node: yaml.Node, loc: tuple) -> int | None:
    """1-based line of the YAML node at `loc` (pydantic's error path), or its nearest parent."""
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            match = node.value[part]
        else:
            match = None  # union member names and the like: stay on the parent
        if match is None:
            continue
        node, line = match, match.start_mark.line + 1
    return line


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    try:
        text = path.read_text()
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as err:
        raise TaskSpecError(f"{path}: cannot read task file ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise TaskSpecError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise TaskSpecError(f"{path}:1: a task file is a mapping of fields (id, title, target, ...)")
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = e["loc"]
            if loc[:1] == ("sources",) and len(loc) > 2 and loc[2] in SOURCE_KEYS:
                loc = loc[:2] + loc[3:]  # drop the union tag pydantic puts in the path
            field = ".".join(str(p) for p in loc) or "(top level)"
            lines.append(f"{path}:{_line_of(node, loc)}: {field}: {e['msg']}")
        raise TaskSpecError("\n".join(dict.fromkeys(lines))) from None
    spec.path = path
    return spec
