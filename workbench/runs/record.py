"""One attempt's record on disk, written so that killing the process loses nothing:

    <out>/<task>/<model>/<n>/
        transcript.jsonl     one event per line, flushed and fsynced as it happens
        checks/round-<i>.json
        result.json          written atomically (tmp + rename) at the end and on interruption
        patch.diff           the attempt branch against the base

Events carry no secrets: the LLM client never hands the API key to the recorder, and every
string written passes `redact`, which replaces the value of any secret-looking environment
variable that appears in it.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..checks.sandbox import SECRET_NAME


def model_label(model: str, scripted: bool) -> str:
    """How a model is named in every table: scripted ones say so."""
    return f"{model} (scripted)" if scripted else model


class AttemptResult(BaseModel):
    task: str
    model: str
    attempt: int
    scripted: bool = False
    status: str = "running"  # passed, failed, budget_exhausted, infrastructure_error, interrupted
    failure_class: str | None = None
    reason: str = ""
    rounds: int = 0
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    branch: str = ""
    base: str = ""
    head: str = ""
    hints: str = "none"  # "full": the task's hints were in the prompt (workbench run --hints full)
    check_rounds: list[list[dict[str, Any]]] = Field(default_factory=list)

    @property
    def label(self) -> str:
        return model_label(self.model, self.scripted)

    @property
    def task_key(self) -> str:
        """The task as tables and folders name it: runs with the hints are a task of their own."""
        return task_key(self.task, self.hints)


def task_key(task: str, hints: str) -> str:
    return task if hints == "none" else f"{task}+hints"


def _secret_values() -> list[str]:
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8]


def redact(text: str) -> str:
    for value in _secret_values():
        text = text.replace(value, "[redacted]")
    return text


class AttemptRecord:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (self.folder / "checks").mkdir(parents=True, exist_ok=True)
        self._log = open(self.folder / "transcript.jsonl", "a", encoding="utf-8")

    def event(self, kind: str, **data: Any) -> None:
        line = redact(json.dumps({"t": round(time.time(), 3), "kind": kind, **data}, default=str))
        self._log.write(line + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def write_round(self, index: int, results: list[dict]) -> None:
        self._atomic(self.folder / "checks" / f"round-{index}.json", json.dumps(results, indent=1))

    def write_result(self, result: AttemptResult) -> None:
        self._atomic(self.folder / "result.json", result.model_dump_json(indent=1))

    def write_patch(self, diff: str) -> None:
        self._atomic(self.folder / "patch.diff", diff)

    def _atomic(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(redact(text), encoding="utf-8")
        os.replace(tmp, path)

    def close(self) -> None:
        self._log.close()


def read_events(folder: Path) -> list[dict]:
    """The transcript's events; a torn last line (the process died mid-write) is dropped."""
    path = Path(folder) / "transcript.jsonl"
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def read_result(folder: Path) -> AttemptResult | None:
    try:
        return AttemptResult.model_validate_json((Path(folder) / "result.json").read_text())
    except (OSError, ValueError):
        return None
