"""Run a probe script (workbench/checks/probes/) in the candidate's process or in the
reference's, and read back what it wrote. Reference runs are cached: they depend only on the
reference module's source, the checkpoint and the probe arguments.
"""

import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..tasks.sources import cache_root
from .candidate import run_candidate
from .sandbox import SandboxResult, run_sandboxed, scrubbed_env

PROBES = Path(__file__).parent / "probes"
REFERENCE_PACKAGES = ("adapters", "kernels")  # whose source keys the reference cache


@dataclass
class ProbeRun:
    done: SandboxResult
    result: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, str]:
        """Op name -> traceback tail, for ops that raised inside the probe."""
        return self.result.get("errors", {})


def _payload(probe: str, args: dict) -> str:
    return (PROBES / f"{probe}.py").read_text() + f"\nmain(__import__('json').loads({json.dumps(args)!r}))\n"


def _read(done: SandboxResult, out: Path) -> ProbeRun:
    run = ProbeRun(done)
    if (out / "result.json").exists():
        run.result = json.loads((out / "result.json").read_text())
        run.tensors = torch.load(out / "tensors.pt", weights_only=True)
    return run


def probe_candidate(tree: Path, probe: str, args: dict, timeout_s: float) -> ProbeRun:
    """Run `probe` as candidate code: workspace first on sys.path, the harness unimportable."""
    out = Path(tempfile.mkdtemp(prefix="wb-probe-"))
    try:
        done = run_candidate(tree, _payload(probe, {**args, "out": str(out)}), timeout_s)
        return _read(done, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _reference_key(probe: str, args: dict, repo_root: Path) -> str:
    digest = hashlib.sha256((PROBES / f"{probe}.py").read_bytes())
    digest.update(json.dumps(args, sort_keys=True).encode())
    for package in REFERENCE_PACKAGES:
        for path in sorted((repo_root / package).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:24]


def probe_reference(repo_root: Path, probe: str, args: dict, timeout_s: float,
                    cache: Path | None = None) -> ProbeRun:
    """Run `probe` on the reference in a process of its own (cached on disk when it succeeds)."""
    folder = (cache or cache_root()) / "reference" / _reference_key(probe, args, repo_root)
    if (folder / "result.json").exists():
        return _read(SandboxResult(0, "", "(cached)", 0.0), folder)
    out = Path(tempfile.mkdtemp(prefix="wb-ref-"))
    env = scrubbed_env({"PYTHONPATH": str(repo_root)})
    done = run_sandboxed([sys.executable, "-c", _payload(probe, {**args, "out": str(out)})], repo_root,
                         timeout_s, env=env)
    run = _read(done, out)
    if done.returncode == 0 and run.result and not run.errors:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), folder)
    else:
        shutil.rmtree(out, ignore_errors=True)
    return run
