"""The process every check runs in: limits, group kill, scrubbed environment, typed outcomes."""

import os
import sys
import time

import pytest

from workbench.checks import run_sandboxed, scrubbed_env
from workbench.checks.result import CheckResult, settle_flaky


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_output_and_exit_code(tmp_path):
    done = run_sandboxed(py("import sys; print('hi'); sys.exit(3)"), tmp_path, 30)
    assert done.returncode == 3 and done.stdout == "hi\n" and not done.timed_out


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "still_alive"
    # A child started in the background that would write a file after the limit.
    (tmp_path / "child.py").write_text(f"import time; time.sleep(3); open({str(marker)!r}, 'w')\n")
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}]); time.sleep(60)"
    start = time.monotonic()
    done = run_sandboxed(py(code), tmp_path, timeout_s=1)
    assert done.timed_out and done.returncode is None and time.monotonic() - start < 10
    time.sleep(4)
    assert not marker.exists(), "a child of the check outlived it"


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a killed daemon may stay a zombie until its new parent reaps it


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finding daemons by their environment needs /proc")
def test_a_daemon_that_left_the_process_group_is_killed_too(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    daemon = f"import os, time; os.setsid(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {daemon!r}]); "
            f"[time.sleep(0.05) for _ in range(200) if not os.path.exists({str(pid_file)!r})]")
    done = run_sandboxed(py("import os; " + code), tmp_path, 30)
    assert done.returncode == 0, done.stderr
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    assert not _alive(pid), "a setsid daemon outlived its check"


def test_segfault_is_a_typed_result(tmp_path):
    done = run_sandboxed(py("import ctypes; ctypes.string_at(0)"), tmp_path, 30)
    assert done.signal == "SIGSEGV"


def test_memory_limit(tmp_path):
    done = run_sandboxed(py("x = bytearray(2 * 1024**3)"), tmp_path, 30, memory_mb=512)
    assert done.returncode != 0 and "MemoryError" in done.stderr


def test_secrets_never_reach_the_process(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    env = scrubbed_env({"EXTRA_AUTH_HEADER": "x", "PYTHONPATH": str(tmp_path)})
    assert "OPENAI_API_KEY" not in env and "EXTRA_AUTH_HEADER" not in env and env["PYTHONPATH"] == str(tmp_path)
    done = run_sandboxed(py("import os; print(sorted(os.environ))"), tmp_path, 30)
    assert "secret" not in done.stdout and "OPENAI_API_KEY" not in done.stdout and "HF_TOKEN" not in done.stdout
    assert os.environ["OPENAI_API_KEY"] == "sk-test-secret"  # the harness keeps its own


def test_thread_caps_reach_the_check_processes(tmp_path, monkeypatch):
    """A check's process honours OMP_NUM_THREADS as the harness's does (on CI's 2 cores a check
    at torch's default of a thread per core beside another ran 12x slower)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = scrubbed_env({"PYTHONPATH": str(tmp_path)})
    done = run_sandboxed(py("import torch; print(torch.get_num_threads())"), tmp_path, 60, env=env)
    assert env["OMP_NUM_THREADS"] == "1" and done.stdout.strip() == "1", done.stderr


def test_long_output_keeps_head_and_tail(tmp_path):
    done = run_sandboxed(py("print('A' * 50000 + 'END')"), tmp_path, 30)
    assert done.stdout.startswith("AAAA") and done.stdout.rstrip().endswith("END") and "characters cut" in done.stdout


def test_flaky_settlement():
    fail = CheckResult(name="numerics", status="fail", category="diverges_from_reference", summary="layer 3 differs")
    ok = CheckResult(name="numerics", status="pass", summary="ok")
    assert settle_flaky(fail, fail).status == "fail"
    flaky = settle_flaky(fail, ok)
    assert flaky.status == "flaky" and flaky.details["rerun"]["status"] == "pass"
