"""Run a probe script (workbench/checks/probes/) in the candidate's process or in the
reference's, and read back what it wrote. Reference runs are cached: they depend only on the
reference module's source, the checkpoint, the probe arguments and the library releases.
"""

import hashlib
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..tasks.sources import RUNTIME, cache_root, installed_release
from .basic import from_process, tail
from .candidate import REFERENCE_PRELUDE, run_candidate
from .result import CheckResult
from .sandbox import SandboxResult, run_sandboxed, scrubbed_env

PROBES = Path(__file__).parent / "probes"
HELPERS = ("spies.py", "int8_grid.py")  # executed ahead of every probe's text
REFERENCE_PACKAGES = ("adapters", "kernels")  # whose source keys the reference cache (and RUNTIME's releases)


@dataclass
class ProbeRun:
    done: SandboxResult
    result: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # where a cached reference run keeps its files

    @property
    def errors(self) -> dict[str, str]:
        """Op name -> traceback tail, for ops that raised inside the probe."""
        return self.result.get("errors", {})


def _payload(probe: str, args: dict) -> str:
    """The probe's text after the helpers it uses (HELPERS), then its call."""
    return ("\n".join((PROBES / name).read_text() for name in (*HELPERS, f"{probe}.py"))
            + f"\nmain(__import__('json').loads({json.dumps(args)!r}))\n")


def _read(done: SandboxResult, out: Path, folder: Path | None = None) -> ProbeRun:
    run = ProbeRun(done, folder=folder)
    if (out / "result.json").exists():
        run.result = json.loads((out / "result.json").read_text())
        run.tensors = torch.load(out / "tensors.pt", weights_only=True)
    return run


def _device_env(args: dict) -> dict[str, str]:
    """Triton runs under its interpreter when the checks run on a CPU."""
    return {"TRITON_INTERPRET": "1"} if args.get("device", "cpu") == "cpu" else {}


def probe_candidate(tree: Path, probe: str, args: dict, timeout_s: float) -> ProbeRun:
    """Run `probe` as candidate code: workspace first on sys.path, the harness unimportable."""
    out = Path(tempfile.mkdtemp(prefix="wb-probe-"))
    try:
        done = run_candidate(tree, _payload(probe, {**args, "out": str(out)}), timeout_s, env=_device_env(args))
        return _read(done, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _reference_key(probe: str, args: dict, repo_root: Path) -> str:
    digest = hashlib.sha256(REFERENCE_PRELUDE.encode()
                            + b"".join((PROBES / name).read_bytes() for name in (*HELPERS, f"{probe}.py")))
    digest.update(json.dumps(args, sort_keys=True).encode())
    digest.update(" ".join(_version(name) for name in RUNTIME).encode())
    for package in REFERENCE_PACKAGES:
        for path in sorted((repo_root / package).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:24]


def _version(distribution: str) -> str:
    release = installed_release(distribution)
    return f"{distribution}=={release}" if release else f"{distribution} (absent)"


def probe_reference(repo_root: Path, probe: str, args: dict, timeout_s: float,
                    cache: Path | None = None) -> ProbeRun:
    """Run `probe` on the reference in a process of its own (cached on disk when it succeeds)."""
    folder = (cache or cache_root()) / "reference" / _reference_key(probe, args, repo_root)
    if (folder / "result.json").exists():
        return _read(SandboxResult(0, "", "(cached)", 0.0), folder, folder)
    out = Path(tempfile.mkdtemp(prefix="wb-ref-"))
    env = scrubbed_env({"PYTHONPATH": str(repo_root), **_device_env(args)})
    code = REFERENCE_PRELUDE + _payload(probe, {**args, "out": str(out)})
    done = run_sandboxed([sys.executable, "-c", code], repo_root, timeout_s, env=env)
    run = _read(done, out)
    if done.returncode == 0 and run.result and not run.errors:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), folder)
        run.folder = folder
    else:
        shutil.rmtree(out, ignore_errors=True)
    return run


def probe_failure(name: str, run: ProbeRun, op: str, timeout_s: float, who: str = "the port") -> CheckResult | None:
    """The result for a probe that did not get through `op`, or None when it did."""
    if run.done.returncode != 0 or run.done.timed_out or not run.result:
        result = from_process(name, run.done, "", timeout_s)
        if result.category == "command_failed":
            result = result.model_copy(update={"category": "crash", "summary": f"{who} failed: {result.summary}"})
        return result
    if op in run.errors:
        error = run.errors[op]
        last = exception_message(error)
        category = ("shape_mismatch" if any(w in error for w in ("shape", "size mismatch", "mismatched"))
                    else "missing_weights" if "missing" in error else "crash")
        return CheckResult(name=name, status="fail", category=category, summary=f"{who} raised: {last}",
                           details={"traceback_tail": tail(error, 25)})
    return None


def exception_message(traceback_text: str, lines: int = 3) -> str:
    """The exception line of a traceback and the first lines of a multi-line message after it."""
    text = traceback_text.strip().splitlines()
    start = max((i for i, line in enumerate(text) if re.match(r"[\w.]+(Error|Exception|Interrupt)\b", line)),
                default=len(text) - 1)
    return " | ".join(line.strip() for line in text[start:start + lines])


def require_reference(run: ProbeRun, op: str, timeout_s: float, reference: str) -> ProbeRun:
    """`run` when the reference's probe got through `op`; otherwise the harness is at fault, not
    the port: raised, so that the runner reports the check as `error`."""
    problem = probe_failure("reference", run, op, timeout_s, who=f"the reference {reference}")
    if problem is not None:
        raise RuntimeError(f"{problem.summary}\n{problem.details}")
    return run
