"""`workbench validate`: a task is sound when its checks fail on the base (there is something
to do) and pass on the gold solution (it can be done, and the checks accept a right answer).
The gold is applied on a branch of a fresh workspace (`wb/<task>/gold/0`), like an attempt."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..tasks.gold import apply_solution
from ..tasks.spec import TaskSpec
from ..tasks.workspace import create_workspace
from .result import CheckResult, accepted
from .runner import run_checks


@dataclass
class Validation:
    spec: TaskSpec
    base: list[CheckResult]
    gold: list[CheckResult]

    @property
    def ok(self) -> bool:
        return accepted(self.gold) and not accepted(self.base)


def validate_task(spec: TaskSpec, root: Path | None = None, device: str | None = None) -> Validation:
    root = Path(root or tempfile.mkdtemp(prefix="wb-validate-"))
    ws = create_workspace(spec, root, fresh=True)
    base = run_checks(spec, ws.path, ws.base, rerun=False, device=device)  # failing here is expected
    attempt = ws.new_attempt("gold", 0, worktree=True)
    apply_solution(spec, attempt.path)
    ws.commit_all(attempt.path, f"gold solution of {spec.id}")
    gold = run_checks(spec, attempt.path, ws.base, device=device)
    return Validation(spec, base, gold)
