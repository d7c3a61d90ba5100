"""`import` and `command` checks on small candidate trees, each outcome typed."""

import json

import pytest

from workbench.checks.basic import check_command, check_import
from workbench.checks.candidate import FORBIDDEN_MARKER, run_candidate


def tree(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_import_passes_and_fails_with_the_traceback(tmp_path):
    ws = tree(tmp_path, {"port/__init__.py": "", "port/good.py": "X = 1\n",
                         "port/bad.py": "import numpy_that_does_not_exist\n"})
    assert check_import(ws, "port.good").passed
    bad = check_import(ws, "port.bad")
    assert bad.status == "fail" and bad.category == "import_error"
    assert "numpy_that_does_not_exist" in bad.summary and "port/bad.py" in bad.details["stderr_tail"]


@pytest.mark.parametrize("module", ["adapters.qwen3", "kernels", "workbench.checks"])
def test_port_cannot_import_the_harness(tmp_path, module):
    ws = tree(tmp_path, {"port/__init__.py": "", "port/cheat.py": f"import {module}\n"})
    cheat = check_import(ws, "port.cheat")
    assert cheat.category == "forbidden_import" and module.split(".")[0] in cheat.summary


def test_hang_and_crash_are_typed(tmp_path):
    ws = tree(tmp_path, {"port/__init__.py": "", "port/hang.py": "import time\ntime.sleep(60)\n",
                         "port/crash.py": "import ctypes\nctypes.string_at(0)\n"})
    hang = check_import(ws, "port.hang", timeout_s=2)
    assert hang.category == "timeout" and hang.seconds < 15
    assert check_import(ws, "port.crash").category == "crash"


def test_command_check(tmp_path):
    ws = tree(tmp_path, {"ok.py": "print('fine')\n", "fail.py": "raise SystemExit('wrong answer')\n"})
    assert check_command(ws, "python ok.py").passed
    failed = check_command(ws, "python fail.py", name="run fail")
    assert failed.status == "fail" and failed.category == "command_failed" and "wrong answer" in failed.summary


def test_harness_packages_look_absent_to_a_port(tmp_path):
    """`find_spec` answers None (as transformers' `is_kernels_available` probes it), an import
    raises ModuleNotFoundError naming the rule, and a port's own modules are found as usual."""
    probe = ("import importlib.util, json, sys\n"
             "seen = {n: importlib.util.find_spec(n) is None for n in ('kernels', 'adapters.qwen3', 'workbench', 'port')}\n"
             "try:\n    import kernels\nexcept ModuleNotFoundError as err:\n    seen['raised'] = str(err)\n"
             "print(json.dumps(seen))\n")
    ws = tree(tmp_path, {"port/__init__.py": "", "port/probe.py": probe})
    done = run_candidate(ws, "import port.probe\n", 60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["kernels"] and seen["adapters.qwen3"] and seen["workbench"] and not seen["port"]
    assert seen["raised"].startswith(FORBIDDEN_MARKER + ": kernels belongs to the harness")


def test_transformers_sees_no_kernels_package(tmp_path):
    """transformers' hub-kernels probe answers False in a port, so it never imports the harness."""
    ws = tree(tmp_path, {"port/__init__.py": "",
                         "port/probe.py": "from transformers.utils import import_utils\n"
                                          "print(import_utils.is_kernels_available())\n"})
    done = run_candidate(ws, "import port.probe\n", 120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_interpreter_rounds_fp32_to_bf16_as_a_gpu_does(tmp_path):
    """Inside the candidate's process, a Triton cast fp32 -> bf16 under TRITON_INTERPRET rounds to
    nearest even (Triton's interpreter alone truncates), ties included, like torch; NaN stays NaN."""
    kernel = ("import json, torch, triton, triton.language as tl\n"
              "@triton.jit\n"
              "def cast(x_ptr, y_ptr, n: tl.constexpr):\n"
              "    o = tl.arange(0, n)\n"
              "    tl.store(y_ptr + o, tl.load(x_ptr + o).to(tl.bfloat16))\n"
              "x = torch.tensor([1 + 2**-8 + 2**-12, 1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-7 - 2**-12), 3e38, float('nan'),"
              " 1e-40, 0.0], dtype=torch.float32)\n"
              "y = torch.empty(8, dtype=torch.bfloat16)\n"
              "cast[(1,)](x, y, 8)\n"
              "print(json.dumps([y.view(torch.int16).tolist(), x.to(torch.bfloat16).view(torch.int16).tolist(),"
              " bool(y[5].isnan())]))\n")
    ws = tree(tmp_path, {"port/__init__.py": "", "port/cast.py": kernel})
    done = run_candidate(ws, "import port.cast\n", 120, env={"TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    got, want, nan = json.loads(done.stdout)
    assert got[:5] + got[6:] == want[:5] + want[6:] and nan  # NaN bit patterns differ by backend
