"""The installed `workbench` console script."""

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
