"""The git workspace of a task: its materialized sources committed as a base with no history,
and one branch per attempt (`wb/<task>/<model>/<n>`), in a worktree of its own when attempts
run in parallel.

The base commit is reproducible (fixed author and dates), so the same task and sources give
the same base hash on every machine, and it holds nothing of the gold solution.
"""

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git

from .fixtures import copy_sample
from .sources import materialize
from .spec import TaskSpec

BASE_TAG = "base"
_IDENTITY = {"GIT_AUTHOR_NAME": "workbench", "GIT_AUTHOR_EMAIL": "workbench@localhost",
             "GIT_COMMITTER_NAME": "workbench", "GIT_COMMITTER_EMAIL": "workbench@localhost",
             "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"}
IGNORED = "__pycache__/\n*.pyc\n.pytest_cache/\n"


def branch_name(task_id: str, model: str, n: int) -> str:
    return f"wb/{task_id}/{re.sub(r'[^A-Za-z0-9._-]+', '-', model)}/{n}"


@dataclass
class Attempt:
    branch: str
    path: Path  # the working tree the agent edits


@dataclass
class Workspace:
    path: Path
    task_id: str
    repo: git.Repo

    @property
    def base(self) -> str:
        return self.repo.tags[BASE_TAG].commit.hexsha

    def new_attempt(self, model: str, n: int, worktree: bool = False, task_key: str | None = None) -> Attempt:
        """Branch `wb/<task>/<model>/<n>` at the base (`<task>+hints` for runs with the hints);
        checked out in the main tree, or in a worktree beside it (`<workspace>.attempts/...`) for
        parallel attempts."""
        branch = branch_name(task_key or self.task_id, model, n)
        if branch in self.repo.heads:
            raise ValueError(f"{self.path}: branch {branch} exists already (attempt {n} of {model} was started)")
        self.repo.create_head(branch, self.base)
        if not worktree:
            self.repo.git.checkout(branch)
            return Attempt(branch, self.path)
        path = self.path.parent / f"{self.path.name}.attempts" / branch.removeprefix("wb/").replace("/", "-")
        self.repo.git.worktree("add", str(path), branch)
        return Attempt(branch, path)

    @contextlib.contextmanager
    def checkout(self, ref: str) -> Iterator[Path]:
        """A temporary detached worktree at `ref` (a branch, tag or commit), removed afterwards."""
        try:
            self.repo.commit(ref)
        except (git.BadName, ValueError) as err:
            raise ValueError(f"{self.path}: no branch, tag or commit named {ref!r}") from err
        path = Path(tempfile.mkdtemp(prefix=f"{self.task_id}-check-")) / "tree"
        self.repo.git.worktree("add", "--detach", str(path), ref)
        try:
            yield path
        finally:
            self.repo.git.worktree("remove", "--force", str(path))
            shutil.rmtree(path.parent, ignore_errors=True)

    def commit_all(self, tree: Path, message: str) -> str | None:
        """Commit every change in `tree` (a worktree of this workspace); the commit, or None when
        there was nothing to commit."""
        repo = git.Repo(tree)
        if not repo.is_dirty(untracked_files=True):
            return None
        repo.git.add(A=True)
        with repo.git.custom_environment(**_IDENTITY):
            repo.git.commit(m=message, no_verify=True)
        return repo.head.commit.hexsha


def create_workspace(spec: TaskSpec, root: str | Path = "workspaces", cache: Path | None = None,
                     fresh: bool = False) -> Workspace:
    """Build (or reopen) `root/<task id>`: the task's sources committed as the tagged base."""
    path = Path(root).resolve() / spec.id
    if path.exists() and fresh:
        shutil.rmtree(path)
        shutil.rmtree(path.parent / f"{path.name}.attempts", ignore_errors=True)
    if path.exists():
        try:
            repo = git.Repo(path)
            repo.tags[BASE_TAG]
        except (git.InvalidGitRepositoryError, IndexError) as err:
            raise ValueError(f"{path}: exists but is not a workspace (no '{BASE_TAG}' tag); "
                             "remove it or pass fresh=True") from err
        return Workspace(path, spec.id, repo)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.id}-", dir=path.parent))
    try:  # build aside, then rename: a failed source leaves no half workspace behind
        for source in spec.sources:
            materialize(source, staging, spec.repo_root, cache)
        if spec.fixture is not None:
            copy_sample(spec.fixture, staging, spec.repo_root, cache)
        (staging / ".gitignore").write_text(IGNORED)
        repo = git.Repo.init(staging, initial_branch="main")
        repo.git.add(A=True)
        with repo.git.custom_environment(**_IDENTITY):
            repo.git.commit(m=f"base: sources of task {spec.id}", no_verify=True)
        repo.create_tag(BASE_TAG)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Workspace(path, spec.id, git.Repo(path))
