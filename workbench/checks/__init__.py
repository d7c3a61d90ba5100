"""Acceptance checks: typed results and the isolated process every check runs in."""

from .result import CheckResult, Status
from .sandbox import SandboxResult, run_sandboxed, scrubbed_env

__all__ = ["CheckResult", "SandboxResult", "Status", "run_sandboxed", "scrubbed_env"]
