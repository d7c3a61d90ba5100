"""One attempt: the agent loop over a worktree of the task's workspace.

Each turn asks the model for its next message, runs its tool calls, and commits what changed on
the attempt branch (`turn <t>: <tools>`). `run_checks` and `finish` run the task's checks: all
pass ends the attempt as passed, anything else goes back to the model as typed failures. The
attempt also ends when a budget runs out (turns, check rounds, tokens, USD, wall time), when the
endpoint fails after retries (infrastructure, not the model's fault), or when the model makes
no progress. Every message, usage figure and check round is in the transcript as it happens, so
`resume` can rebuild the conversation after a crash.
"""

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import git

from ..checks.result import accepted
from ..checks.runner import run_checks
from ..checks.static import DEFAULT_PROTECTED
from ..runs.record import AttemptRecord, AttemptResult
from ..tasks.prompt import Hints, agent_prompt
from ..tasks.spec import TaskSpec
from ..tasks.workspace import Attempt, Workspace
from .llm import BudgetExceeded, InfrastructureError, LLMClient, shorten_old_tool_outputs
from .registry import ModelEntry
from .tools import TOOL_SPECS, Toolbox, ToolError, clip, tool_message

MAX_NUDGES = 2  # replies without a tool call before the attempt ends
MAX_IDLE_TURNS = 10  # turns without a file change or a check round before the attempt ends
NUDGE = "Continue with the tools. When the checks pass, call `finish` with a short summary."

SYSTEM = """You are porting a model to fast W4A8 inference inside a git workspace.
Task: {title}
Deliver the module `{target}`. You work only through the tools: list_dir, read_file, search,
write_file, edit_file, run (a shell command in the workspace), run_checks (the acceptance
checks, run in a separate process on a checkpoint you have not seen) and finish. Paths are
relative to the workspace root; tests/, .wb/ and conftest.py are protected. Budget: {turns}
turns, {rounds} check rounds, {minutes:g} minutes of wall time (check rounds included: one takes
minutes on a CPU). Every turn that changes files is committed for you. The attempt ends when a
check round passes; call finish once they do."""


def check_report(results: list) -> str:
    """What the model reads after a check round: one line per check, details of the failures."""
    lines = ["all checks pass" if accepted(results) else "some checks FAIL"]
    for r in results:
        mark = r.status if r.accepted else f"{r.status.upper()} [{r.category}]"
        lines.append(f"- {r.name}: {mark} ({r.seconds:.0f} s) {r.summary}")
        if not r.accepted and r.details:
            lines.append(clip("  details: " + json.dumps(r.details, default=str), 2500))
    return "\n".join(lines)


class AttemptLoop:
    def __init__(self, spec: TaskSpec, entry: ModelEntry, ws: Workspace, attempt: Attempt, record: AttemptRecord,
                 n: int, base_url: str | None = None, device: str | None = None,
                 on_update: Callable[[AttemptResult, str], None] | None = None, client: LLMClient | None = None,
                 hints: Hints = "none"):
        self.spec, self.entry, self.ws, self.attempt, self.record = spec, entry, ws, attempt, record
        self.device, self.on_update = device, on_update or (lambda result, note: None)
        self.client = client or LLMClient(entry, base_url)
        self.tools = Toolbox(attempt.path, DEFAULT_PROTECTED)
        self.repo = git.Repo(attempt.path)
        self.result = AttemptResult(task=spec.id, model=entry.name, attempt=n, scripted=entry.scripted,
                                    branch=attempt.branch, base=ws.base, hints=hints)
        self.messages: list[dict] = []
        self.last_checked: tuple[str, bool] | None = None  # (tree state, passed) of the last round

    # ---- conversation state ----
    def start(self) -> None:
        self.record.event("start", task=self.spec.id, model=self.entry.name, model_id=self.entry.model_id,
                          scripted=self.entry.scripted, branch=self.attempt.branch, base=self.ws.base,
                          hints=self.result.hints)
        budget = self.spec.budget
        system = SYSTEM.format(title=self.spec.title, target=self.spec.target, turns=budget.turns,
                               rounds=budget.check_rounds, minutes=budget.wall_minutes)
        for message in ({"role": "system", "content": system},
                        {"role": "user", "content": agent_prompt(self.spec, self.attempt.path, self.result.hints)}):
            self.add(message)

    def restore(self, events: list[dict]) -> None:
        """Rebuild the conversation and counters from a transcript (a run killed mid-attempt)."""
        for e in events:
            if e["kind"] == "message":
                self.messages.append(e["message"])
            elif e["kind"] == "usage":
                for field in ("prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"):
                    setattr(self.client.usage, field, getattr(self.client.usage, field) + e[field])
            elif e["kind"] == "check_round":
                self.result.check_rounds.append(e["results"])
        answered = {m.get("tool_call_id") for m in self.messages if m["role"] == "tool"}
        while self.messages and self.messages[-1]["role"] == "assistant" and any(
                c["id"] not in answered for c in self.messages[-1].get("tool_calls") or []):
            self.messages.pop()  # a turn cut off mid-way: ask again
        self.result.turns = sum(1 for m in self.messages if m["role"] == "assistant")
        self.result.rounds = len(self.result.check_rounds)
        self.record.event("resume", turns=self.result.turns, rounds=self.result.rounds)

    def add(self, message: dict) -> None:
        self.messages.append(message)
        self.record.event("message", message=message)

    # ---- the loop ----
    def run(self) -> AttemptResult:
        started = time.monotonic() - self.result.wall_s
        budget = self.spec.budget
        nudges = idle = 0
        try:
            while self.result.status == "running":
                if self.result.turns >= budget.turns:
                    self.end("budget_exhausted", f"used all {budget.turns} turns")
                    break
                if time.monotonic() - started > budget.wall_minutes * 60:
                    self.end("budget_exhausted", f"ran past {budget.wall_minutes} minutes")
                    break
                usage = self.client.usage
                request = shorten_old_tool_outputs(self.messages, self.entry.context_window)
                max_tokens = min(self.entry.max_output_tokens, self.entry.context_window // 4)
                try:
                    self.client.check_budget(request, TOOL_SPECS, max_tokens, budget.usd - usage.cost_usd,
                                             budget.tokens - usage.tokens)
                    message, used = self.client.complete(request, TOOL_SPECS, max_tokens)
                except BudgetExceeded as err:
                    self.end("budget_exhausted", str(err))
                    break
                except InfrastructureError as err:
                    self.end("infrastructure_error", str(err), failure_class="infrastructure")
                    break
                self.result.turns += 1
                self.result.prompt_tokens, self.result.completion_tokens = usage.prompt_tokens, usage.completion_tokens
                self.result.cost_usd = usage.cost_usd
                self.record.event("usage", turn=self.result.turns, **vars(used))
                self.on_update(self.result, message.get("content", "")[:60])
                self.add(message)
                if not message.get("tool_calls"):
                    nudges += 1
                    if nudges > MAX_NUDGES:
                        self.end("failed", "the model stopped calling tools", failure_class="no_progress")
                        break
                    self.add({"role": "user", "content": NUDGE})
                    continue
                nudges = 0
                progressed = self.turn(message["tool_calls"])
                idle = 0 if progressed else idle + 1
                if idle >= MAX_IDLE_TURNS and self.result.status == "running":
                    self.end("failed", f"{idle} turns without a change or a check round", failure_class="no_progress")
        except BaseException as err:  # Ctrl-C, a kill, a harness bug: the record says so, then it goes on up
            self.end("interrupted", f"{type(err).__name__}: {err}")
            raise
        finally:
            self.result.wall_s = time.monotonic() - started
            if self.result.status not in ("running", "interrupted"):
                # the transcript ends on why, for a reader and for a resumed conversation alike
                # (an interrupted turn may hold unanswered tool calls: its note is the end event)
                self.add({"role": "user", "content": f"The attempt is over: {self.result.status} ({self.result.reason})."})
            self.finish_record()
        return self.result

    def turn(self, calls: list[dict]) -> bool:
        """Run one message's tool calls; True when files changed or checks ran."""
        progressed = False
        used = []
        for call in calls:
            name = call.get("function", {}).get("name", "")
            used.append(name)
            if name in ("run_checks", "finish"):
                content = self.checks_round(final=name == "finish")
                progressed = True
            else:
                try:
                    content = self.tools.call(name, call.get("function", {}).get("arguments", "{}"))
                except ToolError as err:
                    content = f"error: {err}"
            self.add(tool_message(call.get("id", ""), content))
            if self.result.status != "running":
                break
        if self.commit(f"turn {self.result.turns}: {', '.join(dict.fromkeys(used))}"):
            progressed = True
        return progressed

    def checks_round(self, final: bool) -> str:
        self.commit(f"turn {self.result.turns}: before check round {self.result.rounds + 1}")
        state = self.repo.head.commit.hexsha
        if final and self.last_checked == (state, True):
            self.end("passed", "finished with all checks passing")
            return "all checks pass"
        if self.result.rounds >= self.spec.budget.check_rounds:
            self.end("budget_exhausted", f"used all {self.spec.budget.check_rounds} check rounds")
            return "no check rounds left"
        self.result.rounds += 1
        results = run_checks(self.spec, self.attempt.path, self.ws.base, device=self.device)
        dumped = [r.model_dump() for r in results]
        self.result.check_rounds.append(dumped)
        self.record.write_round(self.result.rounds, dumped)
        self.record.event("check_round", round=self.result.rounds, commit=state, results=dumped)
        passed = accepted(results)
        self.last_checked = (state, passed)
        failing = [r for r in results if not r.accepted]
        self.result.failure_class = failing[0].category if failing else None
        self.on_update(self.result, "checks pass" if passed else f"{failing[0].name}: {failing[0].category}")
        if passed:
            self.end("passed", f"all checks pass after {self.result.rounds} round(s)")
        return check_report(results)

    def commit(self, message: str) -> bool:
        sha = self.ws.commit_all(self.attempt.path, message)
        if sha is not None:
            self.record.event("commit", sha=sha, message=message)
        return sha is not None

    def end(self, status: str, reason: str, failure_class: str | None = None) -> None:
        self.result.status, self.result.reason = status, reason
        if status == "passed":
            self.result.failure_class = None
        elif failure_class or status == "budget_exhausted":
            self.result.failure_class = failure_class or self.result.failure_class or "budget"
        self.record.event("end", status=status, reason=reason)
        self.on_update(self.result, reason)

    def finish_record(self) -> None:
        usage = self.client.usage
        self.result.prompt_tokens, self.result.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        self.result.cost_usd = usage.cost_usd
        self.result.head = self.repo.head.commit.hexsha
        self.record.write_result(self.result)
        self.record.write_patch(self.repo.git.diff(self.ws.base, self.result.head))


def attempt_folder(out: Path, task: str, model: str, n: int) -> Path:
    """`<out>/<task>/<model>/<n>`; a served name such as `Qwen/Qwen3-Coder` is one folder."""
    return Path(out) / task / re.sub(r"[^A-Za-z0-9._+-]+", "-", model) / str(n)
