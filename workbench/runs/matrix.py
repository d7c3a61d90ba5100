"""`workbench run`: the task x model x attempt matrix, attempts in parallel (one worktree each),
with a live table. `--resume` skips finished attempts and continues unfinished ones from their
transcripts; scripted models get a loopback endpoint of their own per attempt."""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..agent.loop import AttemptLoop, attempt_folder
from ..agent.registry import ModelEntry
from ..agent.scripted import DemoScript, ScriptedServer
from ..tasks.spec import TaskSpec
from ..tasks.workspace import Attempt, Workspace, branch_name, create_workspace
from .record import AttemptRecord, AttemptResult, read_events, read_result, task_key

FINISHED = ("passed", "failed", "budget_exhausted", "infrastructure_error")


@dataclass
class Job:
    spec: TaskSpec
    entry: ModelEntry
    n: int
    hints: str = "none"

    @property
    def task_key(self) -> str:
        return task_key(self.spec.id, self.hints)


def _attempt(ws: Workspace, job: Job, resume: bool) -> Attempt:
    branch = branch_name(job.task_key, job.entry.name, job.n)
    if branch in ws.repo.heads and resume:
        for tree in ws.repo.git.worktree("list", "--porcelain").split("\n\n"):
            if f"branch refs/heads/{branch}" in tree:
                return Attempt(branch, Path(tree.split("\n")[0].removeprefix("worktree ")))
    return ws.new_attempt(job.entry.name, job.n, worktree=True, task_key=job.task_key)


class MatrixRun:
    def __init__(self, jobs: list[Job], out: Path, workspaces: Path, resume: bool, base_url: str | None,
                 device: str | None, console: Console):
        self.jobs, self.out, self.workspaces, self.resume = jobs, Path(out), Path(workspaces), resume
        self.base_url, self.device, self.console = base_url, device, console
        self.rows: dict[tuple, dict] = {}
        self._lock = threading.Lock()  # workspace git operations (branches, worktrees) one at a time

    def table(self) -> Table:
        table = Table("task", "model", "#", "status", "turn", "rounds", "tokens", "cost $", "last")
        for row in self.rows.values():
            table.add_row(*[str(row[k]) for k in ("task", "model", "n", "status", "turns", "rounds", "tokens", "cost",
                                                  "last")])
        return table

    def update(self, result: AttemptResult, note: str) -> None:
        tokens = result.prompt_tokens + result.completion_tokens
        self.rows[(result.task_key, result.model, result.attempt)] = dict(
            task=result.task_key, model=result.label, n=result.attempt, status=result.status, turns=result.turns,
            rounds=result.rounds, tokens=tokens, cost=f"{result.cost_usd:.4f}", last=note[:60])

    def run_one(self, job: Job) -> AttemptResult:
        folder = attempt_folder(self.out, job.task_key, job.entry.name, job.n)
        previous = read_result(folder)
        if previous is not None and previous.status in FINISHED:
            if not self.resume:
                raise FileExistsError(f"{folder}: attempt already recorded; pass --resume or another --out")
            self.update(previous, "recorded earlier")
            return previous
        if folder.exists() and not self.resume:
            raise FileExistsError(f"{folder}: unfinished attempt; pass --resume to continue it")
        with self._lock:
            ws = create_workspace(job.spec, self.workspaces)
            attempt = _attempt(ws, job, self.resume)
        record = AttemptRecord(folder)
        with contextlib.ExitStack() as stack:
            base_url = self.base_url
            if job.entry.scripted:
                base_url = stack.enter_context(ScriptedServer(DemoScript(job.spec), job.entry.name)).base_url
            loop = AttemptLoop(job.spec, job.entry, ws, attempt, record, job.n, base_url, self.device, self.update,
                               hints=job.hints)
            events = read_events(folder)
            if events:
                loop.restore(events)
                if previous is not None:
                    loop.result.wall_s = previous.wall_s
            else:
                loop.start()
            self.update(loop.result, "started")
            try:
                return loop.run()
            finally:
                record.close()

    def run(self, jobs_in_parallel: int) -> list[AttemptResult]:
        for job in self.jobs:
            self.update(AttemptResult(task=job.spec.id, model=job.entry.name, attempt=job.n, hints=job.hints,
                                      scripted=job.entry.scripted, status="queued"), "")
        with Live(self.table(), console=self.console, refresh_per_second=2, transient=False) as live:
            stop = threading.Event()

            def refresh():
                while not stop.wait(0.5):
                    live.update(self.table())

            threading.Thread(target=refresh, daemon=True).start()
            try:
                with ThreadPoolExecutor(jobs_in_parallel) as pool:
                    results = list(pool.map(self.run_one, self.jobs))
            finally:
                stop.set()
                live.update(self.table())
        return results

