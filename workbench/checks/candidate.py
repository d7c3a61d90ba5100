"""Run Python code as the candidate port: the workspace first on sys.path, and the harness's
own packages (`adapters`, `kernels`, `workbench`) unimportable, so a port can neither call the
reference nor reach into the checks. Runs inside `run_sandboxed`.
"""

import sys
from pathlib import Path

from .sandbox import SandboxResult, run_sandboxed, scrubbed_env

BLOCKED = ("adapters", "kernels", "workbench")
FORBIDDEN_MARKER = "WB_FORBIDDEN_IMPORT"

# Executed before the payload in the candidate's interpreter; it imports nothing of the harness.
_BOOTSTRAP = """
import sys, importlib.machinery
class _Block:
    # A spec whose loader raises: `import kernels` fails with the marker, while a library that
    # only probes `importlib.util.find_spec("kernels")` (transformers does, for the hub package
    # of that name) sees no installed distribution and moves on.
    blocked = {blocked!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError("{marker}: " + module.__name__ + " belongs to the harness; a port may not import it")
sys.meta_path.insert(0, _Block())
for _name in list(sys.modules):
    if _name.split(".")[0] in _Block.blocked:
        del sys.modules[_name]
sys.path.insert(0, {workspace!r})
"""


def run_candidate(workspace: str | Path, payload: str, timeout_s: float, memory_mb: int | None = None,
                  env: dict[str, str] | None = None) -> SandboxResult:
    workspace = str(Path(workspace).resolve())
    code = _BOOTSTRAP.format(blocked=BLOCKED, marker=FORBIDDEN_MARKER, workspace=workspace) + payload
    return run_sandboxed([sys.executable, "-I", "-B", "-c", code], workspace, timeout_s, memory_mb,
                         env=scrubbed_env(env))
