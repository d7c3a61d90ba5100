"""Task specs (`tasks/<id>.yaml`) and the git workspaces agents work in."""

from .spec import TaskSpec, TaskSpecError, load_task
from .workspace import Workspace, create_workspace

__all__ = ["TaskSpec", "TaskSpecError", "Workspace", "create_workspace", "load_task"]
