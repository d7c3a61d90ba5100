"""The generic check kinds: `import` (the target module imports) and `command` (a shell
command exits 0). Every outcome of the process maps to a typed result."""

import shlex
import sys
from pathlib import Path

from .candidate import FORBIDDEN_MARKER, run_candidate
from .result import CheckResult
from .sandbox import SandboxResult, run_sandboxed, scrubbed_env

TRACEBACK_LINES = 15


def tail(text: str, lines: int = TRACEBACK_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def from_process(name: str, done: SandboxResult, ok_summary: str, timeout_s: float) -> CheckResult:
    """Map a finished (or killed) process to a result; the category says what went wrong."""
    base = dict(name=name, seconds=done.seconds, details={"stderr_tail": tail(done.stderr), "stdout_tail": tail(done.stdout)})
    if done.timed_out:
        return CheckResult(status="fail", category="timeout", summary=f"did not finish in {timeout_s:.0f} s "
                           "(the whole process group was killed)", **base)
    if done.signal:
        return CheckResult(status="fail", category="crash", summary=f"the process died of {done.signal}", **base)
    if FORBIDDEN_MARKER in done.stderr:
        line = next(l for l in done.stderr.splitlines() if FORBIDDEN_MARKER in l)
        return CheckResult(status="fail", category="forbidden_import",
                           summary=line.split(FORBIDDEN_MARKER + ": ", 1)[-1], **base)
    if "MemoryError" in done.stderr:
        return CheckResult(status="fail", category="memory_limit", summary="ran out of its memory limit", **base)
    if done.returncode != 0:
        last = tail(done.stderr, 1) or f"exit code {done.returncode}"
        return CheckResult(status="fail", category="command_failed", summary=last, **base)
    return CheckResult(status="pass", summary=ok_summary, **base)


def check_import(workspace: Path, target: str, timeout_s: float = 120) -> CheckResult:
    payload = f"import importlib\nimportlib.import_module({target!r})\n"
    result = from_process("import", run_candidate(workspace, payload, timeout_s), f"{target} imports", timeout_s)
    if result.category == "command_failed":
        result = result.model_copy(update={"category": "import_error",
                                           "summary": f"import {target} failed: {result.summary}"})
    return result


def check_command(workspace: Path, cmd: str, name: str = "command", timeout_s: float = 300,
                  memory_mb: int | None = None) -> CheckResult:
    argv = [sys.executable if part == "python" else part for part in shlex.split(cmd)]
    done = run_sandboxed(argv, workspace, timeout_s, memory_mb,
                         env=scrubbed_env({"PYTHONPATH": str(Path(workspace).resolve())}))
    return from_process(name, done, f"`{cmd}` exited 0", timeout_s)
