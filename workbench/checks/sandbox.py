"""Run a command the way every check runs candidate code: its own process group, a wall-time
limit after which the whole group is killed (no server or child outlives it), an address-space
limit, and an environment scrubbed of secrets (API keys never reach candidate code).

A daemon that leaves the group (`setsid`, a double fork) is found by the marker every sandboxed
process inherits in its environment (`WB_SANDBOX=<id>`, read from /proc) and killed too; one
that also clears its environment escapes (cgroups would hold it; this machine has none to give).

Timeouts, signals (a segfault) and the memory limit come back as a typed `SandboxResult`,
never as an exception in the harness.
"""

import os
import re
import resource
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL|AUTH", re.IGNORECASE)
# The variables a sandboxed process keeps. The thread caps are among them: without them a check's
# process runs torch at one thread per core, and two side by side on 2 cores spent their time
# handing tiny ops between threads (the gold Qwen3-MoE weight_load check: 15 s alone, 183 s
# beside another worker's checks)
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES",
                  "WB_CACHE_DIR", "XDG_CACHE_HOME", "VIRTUAL_ENV", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
OUTPUT_LIMIT = 20_000  # characters of stdout/stderr kept: head and tail
MARKER = "WB_SANDBOX"  # environment variable naming one sandboxed run (see kill_marked)


@dataclass
class SandboxResult:
    returncode: int | None  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def signal(self) -> str | None:
        if self.returncode is not None and self.returncode < 0:
            return signal.Signals(-self.returncode).name
        return None


def scrubbed_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: the variables a Python process needs, never one that looks secret."""
    # No .pyc in workspaces: a file rewritten within the same second at the same size would
    # otherwise be run from its stale bytecode (mtime and size are all the check compares).
    # (Candidate probes run with -I, which ignores this variable, and pass -B instead.)
    env = {**{k: v for k, v in os.environ.items() if k in PASSED_THROUGH}, "PYTHONDONTWRITEBYTECODE": "1",
           **(extra or {})}
    return {k: v for k, v in env.items() if not SECRET_NAME.search(k)}


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every process whose environment holds `marker` ("NAME=value"); returns their pids."""
    needle = b"\0" + marker.encode() + b"\0"
    killed = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else ():
        try:
            if needle in b"\0" + (entry / "environ").read_bytes() + b"\0":
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return killed


def _truncate(text: str) -> str:
    if len(text) <= OUTPUT_LIMIT:
        return text
    half = OUTPUT_LIMIT // 2
    return f"{text[:half]}\n... [{len(text) - OUTPUT_LIMIT} characters cut] ...\n{text[-half:]}"


def run_sandboxed(argv: list[str], cwd: str | Path, timeout_s: float, memory_mb: int | None = None,
                  env: dict[str, str] | None = None, stdin: str | None = None) -> SandboxResult:
    def limit_memory():
        if memory_mb:
            nbytes = memory_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))

    start = time.monotonic()
    # Output goes to files, not pipes: a daemon the command leaves behind keeps a pipe open and
    # would hold us until the time limit; with files we stop when the command itself exits.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        run_id = uuid.uuid4().hex
        env = {**(env if env is not None else scrubbed_env()), MARKER: run_id}
        proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True, preexec_fn=limit_memory)
        try:
            if stdin is not None:
                proc.stdin.write(stdin)
                proc.stdin.close()
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: daemons and servers too
            except ProcessLookupError:
                pass
            kill_marked(f"{MARKER}={run_id}")  # and those that left it
        proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return SandboxResult(None if timed_out else proc.returncode, _truncate(stdout), _truncate(stderr),
                         time.monotonic() - start, timed_out)
