"""The porting workbench: tasks, agent loop, acceptance checks, runs and comparisons.

It never imports `kernels` or `adapters` directly: a task names its reference adapter as a
string, and the check process imports it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("porting-workbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
