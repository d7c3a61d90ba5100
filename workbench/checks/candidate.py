"""Run Python code as the candidate port: the workspace first on sys.path, and the harness's
own packages (`adapters`, `kernels`, `workbench`) unimportable, so a port can neither call the
reference nor reach into the checks. Runs inside `run_sandboxed`.
"""

import sys
from pathlib import Path

from .sandbox import SandboxResult, run_sandboxed, scrubbed_env

BLOCKED = ("adapters", "kernels", "workbench")
FORBIDDEN_MARKER = "WB_FORBIDDEN_IMPORT"

# `importlib.util.find_spec` answering None for `names`, as for a missing module. transformers
# probes the hub package `kernels` with it; where it gets a spec but no distribution version (a
# plain checkout) it imports the package to read `__version__` (5.17 to 5.24), and where a hub
# `kernels` release it accepts is installed (0.16 for 5.17) it imports names from it: either way
# it reached the harness's `kernels`, which failed every model check of a gold port on a GPU host.
_HIDE_FROM_FIND_SPEC = """
import importlib.util
def _is_hidden(name, _names={names!r}):
    return name.partition(".")[0] in _names
_find_spec = importlib.util.find_spec
def _find_spec_hiding(name, package=None):
    absolute = importlib.util.resolve_name(name, package) if name.startswith(".") else name
    return None if _is_hidden(absolute) else _find_spec(name, package)
importlib.util.find_spec = _find_spec_hiding
"""

# Under TRITON_INTERPRET=1, Triton 3.6-3.9 casts fp32 to bf16 by truncation, where a GPU rounds to
# nearest even: a port that is right on a GPU came out 2% off on the CPU checks. The candidate's
# and the reference's interpreters round as the GPU does.
_INTERPRETER_ROUNDING = """
import os
if os.environ.get("TRITON_INTERPRET") == "1":
    try:
        import numpy as _np
        import triton.language as _tl
        from triton.runtime import interpreter as _interpreter
        _cast = _interpreter.InterpreterBuilder.cast_impl
        def _cast_rounding(self, src, dst_type):
            if src.dtype.scalar == _tl.float32 and dst_type.scalar == _tl.bfloat16:
                bits = _np.ascontiguousarray(src.data, dtype=_np.float32).view(_np.uint32)
                rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(_np.uint16)
                quiet_nan = ((bits >> 16) | 0x40).astype(_np.uint16)
                return _interpreter.TensorHandle(_np.where(_np.isnan(src.data), quiet_nan, rounded), dst_type.scalar)
            return _cast(self, src, dst_type)
        _interpreter.InterpreterBuilder.cast_impl = _cast_rounding
    except (ImportError, AttributeError):  # another Triton: its interpreter is left as it is
        pass
"""

# Executed before the payload in the candidate's interpreter; it imports nothing of the harness.
# A harness package looks absent whatever the install mode (a checkout on PYTHONPATH, `pip install
# -e`, a wheel) and whatever else shares its name: no spec, and an import statement raises
# ModuleNotFoundError naming the rule.
_BOOTSTRAP = _HIDE_FROM_FIND_SPEC + _INTERPRETER_ROUNDING + """
import sys
class _Block:
    # First on sys.meta_path, so no later finder (the editable install's, the path finder over
    # site-packages) is asked for these names by an import.
    def find_spec(self, name, path=None, target=None):
        if _is_hidden(name):
            raise ModuleNotFoundError("{marker}: " + name + " belongs to the harness; a port may not import it",
                                      name=name)
        return None
sys.meta_path.insert(0, _Block())
for _name in list(sys.modules):
    if _is_hidden(_name):
        del sys.modules[_name]
sys.path.insert(0, {workspace!r})
"""

# Executed before a reference probe, where `kernels` is this project's package: transformers must
# not take it for the hub package of that name (it would import names the package does not have).
REFERENCE_PRELUDE = _HIDE_FROM_FIND_SPEC.format(names=("kernels",)) + _INTERPRETER_ROUNDING


def run_candidate(workspace: str | Path, payload: str, timeout_s: float, memory_mb: int | None = None,
                  env: dict[str, str] | None = None) -> SandboxResult:
    workspace = str(Path(workspace).resolve())
    code = _BOOTSTRAP.format(names=BLOCKED, marker=FORBIDDEN_MARKER, workspace=workspace) + payload
    return run_sandboxed([sys.executable, "-I", "-B", "-c", code], workspace, timeout_s, memory_mb,
                         env=scrubbed_env(env))
