"""Run a task's checks on a tree: each check timed, a failing one re-run once (disagreement is
`flaky`), kinds not built yet reported as `error` rather than silently skipped."""

import time
from pathlib import Path
from typing import Callable

import git

from ..tasks.spec import CheckSpec, TaskSpec
from .basic import check_command, check_import
from .kernel_checks import check_kernel_numerics, check_kernel_perf
from .model_checks import (check_deterministic_output, check_numerics, check_shapes, check_w4a8_execution,
                           check_weight_load)
from .result import CheckResult, settle_flaky
from .static import DEFAULT_FORBIDDEN, DEFAULT_PROTECTED, check_no_forbidden_imports, check_protected_paths


def base_of(tree: Path) -> str | None:
    """The workspace's base commit, when `tree` is a workspace (or one of its worktrees)."""
    try:
        return git.Repo(tree).tags["base"].commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, IndexError):
        return None


def _needs_base(kind: str, tree: Path, base: str | None) -> str:
    if base is None:
        raise ValueError(f"check {kind} compares against the workspace base, but {tree} is not a workspace")
    return base


RUNNERS: dict[str, Callable[[TaskSpec, CheckSpec, Path, str | None], CheckResult]] = {
    "import": lambda spec, c, tree, base: check_import(tree, spec.target, c.params.get("timeout_s", 120)),
    "command": lambda spec, c, tree, base: check_command(tree, c.params["cmd"], c.name or "command",
                                                         c.params.get("timeout_s", 300)),
    "pytest": lambda spec, c, tree, base: check_command(tree, "python -m pytest -q " + c.params.get("args", ""),
                                                        c.name or "pytest", c.params.get("timeout_s", 300)),
    "no_forbidden_imports": lambda spec, c, tree, base: check_no_forbidden_imports(
        tree, _needs_base("no_forbidden_imports", tree, base), tuple(c.params.get("packages", DEFAULT_FORBIDDEN))),
    "protected_paths": lambda spec, c, tree, base: check_protected_paths(
        tree, _needs_base("protected_paths", tree, base), tuple(c.params.get("paths", DEFAULT_PROTECTED))),
    "shapes": lambda spec, c, tree, base: check_shapes(spec, c, tree),
    "weight_load": lambda spec, c, tree, base: check_weight_load(spec, c, tree),
    "deterministic_output": lambda spec, c, tree, base: check_deterministic_output(spec, c, tree),
    "numerics": lambda spec, c, tree, base: check_numerics(spec, c, tree),
    "w4a8_execution": lambda spec, c, tree, base: check_w4a8_execution(spec, c, tree),
    "kernel_numerics": lambda spec, c, tree, base: check_kernel_numerics(spec, c, tree),
    "kernel_perf": lambda spec, c, tree, base: check_kernel_perf(spec, c, tree),
}


def run_check(spec: TaskSpec, check: CheckSpec, tree: Path, base: str | None, rerun: bool = True) -> CheckResult:
    name = check.name or check.kind
    runner = RUNNERS.get(check.kind)
    start = time.monotonic()
    if runner is None:
        return CheckResult(name=name, status="error", summary=f"check kind {check.kind!r} is not implemented yet")
    try:
        result = runner(spec, check, tree, base)
        if rerun and result.status == "fail":
            result = settle_flaky(result, runner(spec, check, tree, base))
    except Exception as err:  # noqa: BLE001  # the harness's fault (a spec missing a parameter, a tree that
        # is not a workspace, a reference that fails): reported as `error`, never blamed on the port
        result = CheckResult(name=name, status="error", category="infrastructure",
                             summary=f"cannot run: {type(err).__name__}: {err}")
    return result.model_copy(update={"name": name, "seconds": time.monotonic() - start})


def run_checks(spec: TaskSpec, tree: Path, base: str | None = None, rerun: bool = True,
               device: str | None = None) -> list[CheckResult]:
    """Every check of `spec` on `tree`, in order; `device` overrides the spec's (cpu or cuda)."""
    spec = spec.model_copy(update={"device": device}) if device else spec
    tree = Path(tree).resolve()
    base = base or base_of(tree)
    return [run_check(spec, check, tree, base, rerun) for check in spec.checks]
