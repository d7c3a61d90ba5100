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
