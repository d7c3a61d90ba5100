"""The agent loop over real loopback HTTP through the `openai` client: scripted models drive it,
faults are injected by the server, and every outcome is read back from the run's records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import git
import pytest
from typer.testing import CliRunner

from workbench.agent.llm import LLMClient
from workbench.agent.loop import NUDGE, AttemptLoop
from workbench.agent.registry import ModelEntry, resolve_model
from workbench.agent.scripted import ScriptedServer, call
from workbench.cli import app
from workbench.runs.record import AttemptRecord, read_events, read_result
from workbench.tasks import create_workspace, load_task

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-test-0123456789abcdef"

SMALL_TASK = """\
id: small
title: Small task
target: port.model
reference: adapters.qwen3
sources:
  - {dir: tasks/small/start}
prompt: Write port/model.py with answer() returning 42.
hints: The answer is forty-two, an int.
checks:
  - {kind: import}
  - {kind: command, name: answer, cmd: "python -c 'import port.model as m; assert m.answer() == 42'"}
budget: {turns: 12, check_rounds: 3, tokens: 1000000, usd: 1, wall_minutes: 5}
"""


@pytest.fixture
def small(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path / "cache"))
    start = tmp_path / "repo/tasks/small/start/port"
    start.mkdir(parents=True)
    (start / "__init__.py").write_text("")
    task = tmp_path / "repo/tasks/small.yaml"
    task.write_text(SMALL_TASK)
    return load_task(task)


def attempt_loop(spec, tmp_path, server, **budget):
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update=budget)}) if budget else spec
    ws = create_workspace(spec, tmp_path / "ws")
    attempt = ws.new_attempt("scripted", 1, worktree=True)
    entry = ModelEntry(name="scripted", base_url=server.base_url, model_id="scripted", api_key_env="WB_TEST_API_KEY",
                       prices={"input": 1.0, "output": 2.0})
    client = LLMClient(entry, server.base_url, timeout_s=2.0, max_retries=2)
    loop = AttemptLoop(spec, entry, ws, attempt, AttemptRecord(tmp_path / "run"), 1, client=client)
    loop.start()
    return loop


def by_step(*steps):
    """A script from a list of assistant messages, one per turn (the last one repeats)."""
    def script(messages):
        step = sum(1 for m in messages if m["role"] == "assistant")
        return steps[min(step, len(steps) - 1)](step)
    return script


def say(*calls, text=""):
    return lambda step: {"role": "assistant", "content": text, "tool_calls": [c(step) for c in calls]}


def tool(name, **args):
    return lambda step: call(name, step, **args)


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("WB_TEST_API_KEY", SECRET)


def tool_outputs(folder):
    return [e["message"]["content"] for e in read_events(folder) if e["kind"] == "message"
            and e["message"]["role"] == "tool"]


def test_faults_in_tool_calls_come_back_as_errors_and_the_attempt_still_passes(small, tmp_path):
    bad_json = lambda step: {"id": f"c{step}", "type": "function",  # noqa: E731
                             "function": {"name": "write_file", "arguments": "{not json"}}
    script = by_step(
        say(bad_json),
        say(tool("delete_everything")),
        say(tool("write_file", path="../escape.txt", content="x")),
        say(tool("write_file", path="tests/test_x.py", content="x")),
        say(tool("edit_file", path="port/__init__.py", old="nothing like this", new="")),
        say(tool("run", command="sleep 30", timeout_s=1)),
        say(tool("run", command="(sleep 301 &) ; echo $WB_TEST_API_KEY; echo started")),
        say(tool("write_file", path="port/model.py", content="def answer():\n    return 42\n")),
        say(tool("finish", summary="done")),
    )
    with ScriptedServer(script) as server:
        result = attempt_loop(small, tmp_path, server).run()
    assert result.status == "passed" and result.rounds == 1 and result.turns == 9
    outputs = tool_outputs(tmp_path / "run")
    assert outputs[0].startswith("error: arguments are not valid JSON")
    assert outputs[1].startswith("error: unknown tool 'delete_everything'")
    assert "may not use '..'" in outputs[2] and not (tmp_path / "ws/escape.txt").exists()
    assert "protected path" in outputs[3]
    assert "occurs 0 times" in outputs[4]
    assert "killed at the time limit" in outputs[5]
    assert "started" in outputs[6] and SECRET not in outputs[6]  # no key in the command's environment
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "sleep 301"], capture_output=True).returncode == 1  # group killed
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in server.requests)  # the key went to the endpoint
    for path in (tmp_path / "run").rglob("*"):  # ... and nowhere else
        assert not path.is_file() or SECRET not in path.read_text(), path


def test_a_model_that_never_finishes_ends_by_budget(small, tmp_path):
    with ScriptedServer(by_step(say(tool("list_dir")))) as server:
        result = attempt_loop(small, tmp_path, server, turns=4).run()
    assert result.status == "budget_exhausted" and result.turns == 4 and "4 turns" in result.reason
    assert read_result(tmp_path / "run").status == "budget_exhausted"


def test_usd_budget_is_checked_before_the_request(small, tmp_path):
    with ScriptedServer(by_step(say(tool("list_dir")))) as server:
        result = attempt_loop(small, tmp_path, server, usd=1e-9).run()
    assert result.status == "budget_exhausted" and "could cost" in result.reason and not server.requests


def test_a_model_that_stops_calling_tools_is_nudged_then_stopped(small, tmp_path):
    with ScriptedServer(by_step(lambda step: {"role": "assistant", "content": "I think I am done."})) as server:
        result = attempt_loop(small, tmp_path, server).run()
    assert result.status == "failed" and result.failure_class == "no_progress" and result.turns == 3
    users = [e["message"]["content"] for e in read_events(tmp_path / "run")
             if e["kind"] == "message" and e["message"]["role"] == "user"]
    # the task prompt, two nudges, and the note on why the attempt ended
    assert users[1:] == [NUDGE, NUDGE, "The attempt is over: failed (the model stopped calling tools)."]


def test_rate_limit_with_retry_after_is_retried(small, tmp_path):
    script = by_step(say(tool("write_file", path="port/model.py", content="def answer():\n    return 42\n")),
                     say(tool("run_checks")))
    with ScriptedServer(script) as server:
        server.faults = [{"status": 429, "retry_after": "0.2"}, {"status": 500}]
        started = time.monotonic()
        result = attempt_loop(small, tmp_path, server).run()
    assert result.status == "passed" and len(server.requests) == 4 and time.monotonic() - started >= 0.2


@pytest.mark.parametrize("fault,expected", [({"status": 500}, "InternalServerError"), ({"hang_s": 4}, "timed out")])
def test_endpoint_failures_after_retries_are_infrastructure_errors(small, tmp_path, fault, expected):
    with ScriptedServer(by_step(say(tool("list_dir")))) as server:
        server.faults = [fault] * 3  # one try and two retries
        result = attempt_loop(small, tmp_path, server).run()
    assert result.status == "infrastructure_error" and result.failure_class == "infrastructure"
    assert expected in result.reason and result.turns == 0


def test_base_url_makes_any_name_an_endpoint():
    entry = resolve_model("my-local-model", base_url="http://127.0.0.1:9/v1", api_key_env="MY_KEY")
    assert (entry.model_id, entry.base_url, entry.api_key_env) == ("my-local-model", "http://127.0.0.1:9/v1", "MY_KEY")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        resolve_model("nope")


def test_models_lists_the_registry(monkeypatch):
    import workbench.cli

    monkeypatch.setenv("OPENAI_API_KEY", "x" * 20)
    monkeypatch.setattr(workbench.cli.console, "width", 200)
    out = CliRunner().invoke(app, ["models"]).output
    for name in ("gpt-5.1", "glm-4.6", "kimi-k2", "minimax-m2", "deepseek-v3.1", "qwen3-coder", "doubao-seed-code"):
        assert name in out
    assert "scripted" in out


@pytest.mark.usefixtures("task_cache")
def test_demo_passes_and_its_branch_replays_the_session(tmp_path):
    result = CliRunner().invoke(app, ["run", str(REPO / "tasks/qwen3_w4a8.yaml"), "--model", "demo",
                                      "--out", str(tmp_path / "out"), "--workspaces", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out/qwen3_w4a8/demo/1"
    record = read_result(folder)
    assert record.status == "passed" and record.scripted and record.rounds == 2
    first, second = (json.loads((folder / f"checks/round-{i}.json").read_text()) for i in (1, 2))
    weight_load = next(r for r in first if r["name"] == "weight_load")
    assert weight_load["status"] == "fail" and "q_norm" in weight_load["summary"]
    assert all(r["status"] == "pass" for r in second)
    repo = git.Repo(tmp_path / "ws/qwen3_w4a8")
    log = repo.git.log("--format=%s", f"{record.base}..{record.branch}").splitlines()
    assert log == ["turn 5: edit_file", "turn 3: write_file"]
    assert "self_attn.q_norm = _torch.nn.Identity()" not in repo.git.show(f"{record.branch}:w4a8_inference/qwen3.py")
    assert "+from ._gold.adapters.qwen3 import generate, load_model" in (folder / "patch.diff").read_text()


@pytest.mark.usefixtures("task_cache")
def test_a_run_killed_mid_attempt_resumes_from_its_transcript(tmp_path):
    out, ws = tmp_path / "out", tmp_path / "ws"
    cmd = [sys.executable, "-m", "workbench.cli", "run", str(REPO / "tasks/w4a8_gemm_kernel.yaml"), "--model", "demo",
           "--out", str(out), "--workspaces", str(ws)]
    folder = out / "w4a8_gemm_kernel/demo/1"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(e["kind"] == "commit" for e in read_events(folder)):  # killed right after its first commit
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_events(folder)
    assert read_result(folder) is None  # killed: no result yet, the transcript is all there is
    assert CliRunner().invoke(app, cmd[3:] + ["--resume"]).exit_code == 0
    after = read_events(folder)
    assert after[:len(before)] == before and any(e["kind"] == "resume" for e in after)
    assert read_result(folder).status == "passed"
    again = CliRunner().invoke(app, cmd[3:] + ["--resume"])  # finished: skipped, not rerun
    assert again.exit_code == 0 and len(read_events(folder)) == len(after)


def test_turns_without_progress_end_the_attempt(small, tmp_path):
    with ScriptedServer(by_step(say(tool("read_file", path="port/__init__.py")))) as server:
        result = attempt_loop(small, tmp_path, server).run()
    assert result.status == "failed" and result.failure_class == "no_progress" and result.turns == 10


def test_old_tool_outputs_are_shortened_to_fit_the_context():
    from workbench.agent.llm import shorten_old_tool_outputs

    messages = [{"role": "system", "content": "s"}] + [
        {"role": "tool", "tool_call_id": str(i), "content": "x" * 10_000} for i in range(10)]
    short = shorten_old_tool_outputs(messages, context_tokens=10_000)
    assert sum(len(m["content"]) for m in short) <= 10_000 * 3.5 * 0.8
    assert short[-1]["content"] == messages[-1]["content"]  # the latest outputs stay whole
    assert short[1]["content"].endswith("[older tool output shortened]") and messages[1]["content"] == "x" * 10_000


def test_run_against_any_endpoint_with_base_url(small, tmp_path):
    script = by_step(say(tool("write_file", path="port/model.py", content="def answer():\n    return 42\n")),
                     say(tool("finish", summary="done")))
    with ScriptedServer(script, model="org/some-served-model") as server:
        result = CliRunner().invoke(app, ["run", str(small.path), "--model", "org/some-served-model", "--base-url",
                                          server.base_url, "--api-key-env", "WB_TEST_API_KEY", "--out",
                                          str(tmp_path / "out"), "--workspaces", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert server.requests[0]["body"]["model"] == "org/some-served-model"
    assert read_result(tmp_path / "out/small/org-some-served-model/1").status == "passed"  # one folder


def test_hints_are_handed_out_only_when_asked_and_recorded(small, tmp_path):
    """`--hints full` puts the task's hints in the prompt and records the attempt as task
    `<id>+hints` (a folder, branch and compare row of its own); the default leaves them out. The
    system prompt names the wall budget, and the transcript ends on why the attempt ended."""
    script = by_step(say(tool("write_file", path="port/model.py", content="def answer():\n    return 42\n")),
                     say(tool("finish", summary="done")))
    prompts = {}
    for hints in ("none", "full"):
        with ScriptedServer(script, model="served") as server:
            result = CliRunner().invoke(app, ["run", str(small.path), "--model", "served", "--base-url",
                                              server.base_url, "--api-key-env", "WB_TEST_API_KEY", "--hints", hints,
                                              "--out", str(tmp_path / "out"), "--workspaces", str(tmp_path / "ws")])
        assert result.exit_code == 0, result.output
        system, user = server.requests[0]["body"]["messages"][:2]
        assert "5 minutes of wall time" in system["content"]
        prompts[hints] = user["content"]
        folder = tmp_path / "out" / ("small" if hints == "none" else "small+hints") / "served/1"
        recorded = read_result(folder)
        assert (recorded.task, recorded.hints, recorded.status) == ("small", hints, "passed")
        last = [e for e in read_events(folder) if e["kind"] == "message"][-1]["message"]
        assert last == {"role": "user", "content": "The attempt is over: passed (all checks pass after 1 round(s))."}
    assert "forty-two" in prompts["full"] and "forty-two" not in prompts["none"]
    assert "Installed, for your port and for the checks: torch " in prompts["none"]
    table = CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "out"), "--format", "csv"])
    assert table.exit_code == 0 and "small+hints" in table.output and ",small," in table.output, table.output
    bad = CliRunner().invoke(app, ["run", str(small.path), "--model", "demo", "--hints", "some"])
    assert bad.exit_code == 2 and "--hints must be one of none, full" in bad.output
