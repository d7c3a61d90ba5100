"""The `workbench` command line: the installed console script, validate across tasks."""

import json
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from workbench import __version__
from workbench.cli import app


def test_version_flag():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"workbench {__version__}"
    assert __version__ != "0.0.0+unknown"  # the package is installed, its metadata is read


def test_console_script_is_installed():
    exe = shutil.which("workbench") or str((__import__("pathlib").Path(sys.executable).parent / "workbench"))
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("workbench ")


def test_info_lists_dependencies():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0 and "torch" in result.output and "triton" in result.output


def test_failure_details_name_each_failed_check_with_its_details():
    from workbench.checks.result import CheckResult
    from workbench.cli import failure_details

    results = [CheckResult(name="shapes", status="pass", summary="ok", details={"x": 1}),
               CheckResult(name="deterministic_output", status="fail", summary="alone vs batch",
                           details={"batched": [[1, 2, 3]], "alone": [[1, 2, 4]]}),
               CheckResult(name="numerics", status="flaky", summary="flaky", details={"rel": 0.5}),
               CheckResult(name="kernel_perf", status="skip", summary="no GPU", details={"why": "cpu"})]
    lines = failure_details(results, limit=100)
    assert lines == ['deterministic_output fail: {"batched": [[1, 2, 3]], "alone": [[1, 2, 4]]}',
                     'numerics flaky: {"rel": 0.5}']
    assert len(failure_details(results, limit=10)[0]) == len("deterministic_output fail: ") + 10


SMALL = """\
id: {id}
title: Small task
target: port.model
reference: adapters.qwen3
sources:
  - {{dir: {start}}}
prompt: Write port/model.py with answer() returning 42.
checks:
  - {{kind: import}}
  - {{kind: command, name: answer, cmd: "python -c 'import port.model as m; assert m.answer() == 42'"}}
solution: {{dir: tasks/small/solution}}
"""


def test_validate_goes_on_past_a_task_that_cannot_be_built(tmp_path, monkeypatch):
    """A task whose workspace cannot be built (a missing source here; a fixture build over its
    time limit on the GPU host) is reported NOT valid with the reason; the others still run."""
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path / "cache"))
    tasks = tmp_path / "repo/tasks"
    (tasks / "small/start/port").mkdir(parents=True)
    (tasks / "small/start/port/__init__.py").write_text("")
    (tasks / "small/solution/port").mkdir(parents=True)
    (tasks / "small/solution/port/model.py").write_text("def answer():\n    return 42\n")
    (tasks / "broken.yaml").write_text(SMALL.format(id="broken", start="tasks/nowhere"))
    (tasks / "small.yaml").write_text(SMALL.format(id="small", start="tasks/small/start"))
    records = tmp_path / "validate.json"
    result = CliRunner().invoke(app, ["validate", str(tasks / "broken.yaml"), str(tasks / "small.yaml"), "--jobs", "2",
                                      "--root", str(tmp_path / "ws"), "--json", str(records)], terminal_width=200)
    assert result.exit_code == 1, result.output
    assert "broken: NOT valid: its workspace could not be built" in result.output and "small: valid" in result.output
    broken, small = json.loads(records.read_text())
    assert broken["valid"] is False and "tasks/nowhere" in broken["error"]
    assert small["valid"] is True and [c["status"] for c in small["gold"]] == ["pass", "pass"]
