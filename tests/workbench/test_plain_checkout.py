"""The model checks from a checkout that is not pip-installed (the repository on PYTHONPATH, as a
user runs it on a GPU host), against each transformers release the project admits: the gold port
passes. This environment's release runs as installed; the others come from `pip install --target`
folders named in $WB_TEST_TRANSFORMERS (os.pathsep-separated; `.ci/run` installs 4.57.1 and
5.17.0) and run with the hub `kernels` distribution of $WB_TEST_HUB_KERNELS beside the project
(0.16.2 is the one 5.17 accepts and imports: a port must still not reach the harness's `kernels`).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .plain_env import plain_python

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("task_cache")
CHECKS = ["import", "shapes", "numerics"]

# Runs in the plain interpreter: what it sees installed, then the checks on the gold port.
SCRIPT = f"""
import importlib.metadata, json, sys, tempfile
import transformers, kernels
from workbench.checks.runner import run_check
from workbench.tasks import create_workspace, load_task
from workbench.tasks.gold import apply_solution
from workbench.tasks.spec import CheckSpec

spec = load_task("tasks/qwen3_w4a8.yaml")
ws = create_workspace(spec, tempfile.mkdtemp())
apply_solution(spec, ws.path)
results = [run_check(spec, CheckSpec(kind=kind), ws.path, ws.base, rerun=False) for kind in {CHECKS!r}]
dists = sorted(d.metadata["Name"] for d in importlib.metadata.distributions())
print(json.dumps({{"transformers": transformers.__version__, "kernels_from": kernels.__file__, "dists": dists,
                  "results": [r.model_dump(mode="json") for r in results]}}))
"""


def checkout(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (no egg-info of an editable install)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _releases() -> list:
    folders = [Path(p) for p in os.environ.get("WB_TEST_TRANSFORMERS", "").split(os.pathsep) if p]
    return [pytest.param(None, id="installed")] + [pytest.param(f, id=f.name) for f in folders]


@pytest.mark.parametrize("transformers_dir", _releases())
def test_model_checks_pass_the_gold_port_from_a_plain_checkout(tmp_path, transformers_dir):
    hub_kernels = os.environ.get("WB_TEST_HUB_KERNELS") if transformers_dir else None
    overlays = tuple(Path(p) for p in (transformers_dir, hub_kernels) if p)
    python = plain_python(tmp_path / "env", overlays)
    repo = checkout(tmp_path / "checkout")
    env = {**os.environ, "PYTHONPATH": str(repo), "TRITON_INTERPRET": "1"}
    done = subprocess.run([str(python), "-c", SCRIPT], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "porting-workbench" not in seen["dists"], "the project is installed in the plain environment"
    assert Path(seen["kernels_from"]).parent == repo / "kernels", seen["kernels_from"]
    assert ("kernels" in seen["dists"]) == bool(hub_kernels)
    if transformers_dir is not None:
        assert transformers_dir.name.endswith(seen["transformers"]), (transformers_dir, seen["transformers"])
    for result in seen["results"]:
        assert result["status"] == "pass", f"transformers {seen['transformers']}: {result}"
