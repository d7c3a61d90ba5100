"""Checks on the patch itself, against the workspace's base commit: `no_forbidden_imports`
(the port imports none of the forbidden packages, statically) and `protected_paths` (the patch
touches no checks, fixtures or conftest). Both read the working tree, committed or not, plus
untracked files."""

import ast
from pathlib import Path

import git

from ..tasks.sources import glob_regex
from .result import CheckResult

DEFAULT_FORBIDDEN = ("adapters", "kernels", "workbench")
DEFAULT_PROTECTED = ("conftest.py", "**/conftest.py", "tests/**", ".wb/**")


def changed_files(workspace: Path, base: str) -> list[str]:
    """Paths added or modified since `base`, in the working tree, untracked ones included."""
    repo = git.Repo(workspace)
    names = set(repo.git.diff("--name-only", "--diff-filter=d", base).split()) | set(repo.untracked_files)
    return sorted(names)


def _imported_names(source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            out.append((node.lineno, node.args[0].value))  # importlib.import_module("adapters.qwen3")
    return out


def check_no_forbidden_imports(workspace: Path, base: str, packages=DEFAULT_FORBIDDEN) -> CheckResult:
    hits, unparsable = [], []
    for name in changed_files(workspace, base):
        if not name.endswith(".py") or not (workspace / name).is_file():
            continue
        try:
            imports = _imported_names((workspace / name).read_text(errors="replace"))
        except SyntaxError as err:
            unparsable.append(f"{name}:{err.lineno}: {err.msg}")
            continue
        hits += [f"{name}:{line}: imports {module}" for line, module in imports if module.split(".")[0] in packages]
    details = {"forbidden": list(packages), "hits": hits, "unparsable": unparsable}
    if hits:
        return CheckResult(name="no_forbidden_imports", status="fail", category="forbidden_import",
                           summary=f"{hits[0]} (forbidden: {', '.join(packages)}; write the code yourself)",
                           details=details)
    return CheckResult(name="no_forbidden_imports", status="pass",
                       summary=f"no import of {', '.join(packages)} in the patch", details=details)


def check_protected_paths(workspace: Path, base: str, protected=DEFAULT_PROTECTED) -> CheckResult:
    regexes = [glob_regex(p) for p in protected]
    touched = [n for n in changed_files(workspace, base) if any(r.match(n) for r in regexes)]
    repo = git.Repo(workspace)
    deleted = [n for n in repo.git.diff("--name-only", "--diff-filter=D", base).split()
               if any(r.match(n) for r in regexes)]
    bad = touched + [f"{n} (deleted)" for n in deleted]
    details = {"protected": list(protected), "touched": bad}
    if bad:
        return CheckResult(name="protected_paths", status="fail", category="tampering",
                           summary=f"the patch changes protected paths: {', '.join(bad[:5])}", details=details)
    return CheckResult(name="protected_paths", status="pass", summary="no protected path changed", details=details)
