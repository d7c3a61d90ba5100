"""`workbench compare` / `review` on records made by real runs of scripted models (the small task
of test_agent over loopback HTTP): every figure checked against hand computation."""

import json
import math

import pytest
from typer.testing import CliRunner

from workbench.agent.llm import LLMClient
from workbench.agent.loop import AttemptLoop, attempt_folder
from workbench.agent.registry import ModelEntry
from workbench.agent.scripted import ScriptedServer
from workbench.cli import app
from workbench.runs.compare import compare, load_results, mcnemar, pass_at_k
from workbench.runs.record import AttemptRecord
from workbench.tasks import create_workspace

from .test_agent import api_key, by_step, say, small, tool  # noqa: F401  (fixtures)

GOOD = "def answer():\n    return 42\n"
BAD = "def answer():\n    return 41\n"


def passes_in(rounds: int):
    """Writes a wrong answer `rounds - 1` times, checking each time, then the right one."""
    steps = []
    for _ in range(rounds - 1):
        steps += [say(tool("write_file", path="port/model.py", content=BAD)), say(tool("run_checks"))]
    steps += [say(tool("write_file", path="port/model.py", content=GOOD)), say(tool("finish", summary="ok"))]
    return by_step(*steps)


NEVER = by_step(say(tool("write_file", path="port/model.py", content=BAD)), say(tool("run_checks")))


@pytest.fixture
def runs(small, tmp_path):  # noqa: F811
    """alpha: passes in 1, passes in 2, fails; beta: fails, passes in 3, infrastructure error."""
    plan = {("alpha", 1): passes_in(1), ("alpha", 2): passes_in(2), ("alpha", 3): NEVER,
            ("beta", 1): NEVER, ("beta", 2): passes_in(3), ("beta", 3): "infra"}
    ws = create_workspace(small, tmp_path / "ws")
    out = tmp_path / "out"
    for (model, n), script in plan.items():
        with ScriptedServer(script if script != "infra" else NEVER) as server:
            if script == "infra":
                server.faults = [{"status": 500}] * 3
            entry = ModelEntry(name=model, base_url=server.base_url, model_id=model, api_key_env="WB_TEST_API_KEY",
                               prices={"input": 1.0, "output": 2.0})
            loop = AttemptLoop(small, entry, ws, ws.new_attempt(model, n, worktree=True),
                               AttemptRecord(attempt_folder(out, small.id, model, n)), n,
                               client=LLMClient(entry, server.base_url, timeout_s=2, max_retries=2))
            loop.start()
            loop.run()
    return out


def test_figures_match_hand_computation(runs):
    results, corrupt = load_results(runs)
    assert len(results) == 6 and not corrupt
    rows = {(r.model, r.task): r for r in compare(results)}
    alpha, beta = rows[("alpha", "(all)")], rows[("beta", "(all)")]
    assert [r.model for r in compare(results)][0] == "alpha"  # ranked first
    assert (alpha.attempts, alpha.infra, alpha.passed) == (3, 0, 2)
    assert (beta.attempts, beta.infra, beta.passed) == (3, 1, 1)
    assert alpha.pass_at_1 == pytest.approx(2 / 3) and beta.pass_at_1 == pytest.approx(1 / 2)  # infra excluded
    assert alpha.k == 3 and alpha.pass_at_k == 1.0  # n=3, c=2, k=3: any 3 include a pass
    assert beta.k == 2 and beta.pass_at_k == 1.0  # n=2 valid, c=1, k=2
    assert alpha.within_rounds == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3})
    assert beta.within_rounds == pytest.approx({1: 0.0, 2: 0.0, 3: 1 / 2})
    assert alpha.median_rounds == 1.5 and beta.median_rounds == 3
    assert alpha.failures == {"command_failed": 1} and beta.failures == {"command_failed": 1, "infrastructure": 1}
    assert alpha.cost_per_success == pytest.approx(alpha.cost_usd / 2) and alpha.cost_usd > 0
    paired = mcnemar(results, "alpha", "beta")
    # pairs (attempt 1, 2): alpha-only on 1, both on 2; attempt 3 dropped (beta infra)
    assert (paired.pairs, paired.only_a, paired.only_b) == (2, 1, 0)
    assert paired.p_value == 1.0 and "no significant difference" in paired.verdict


def test_pass_at_k_is_unbiased():
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k(4, 0, 2) == 0.0


def test_cli_compare_formats_and_corrupt_records(runs):
    (runs / "small/alpha/9").mkdir(parents=True)
    (runs / "small/alpha/9/result.json").write_text('{"task": "small", "model": "alp')  # half-written
    runner = CliRunner()
    table = runner.invoke(app, ["compare", "--out", str(runs)])
    assert table.exit_code == 0 and "skipped" in table.stderr and "alpha/9/result.json" in table.stderr.replace("\n", "")
    data = json.loads(runner.invoke(app, ["compare", "--out", str(runs), "--format", "json"]).stdout)
    assert {r["model"] for r in data["rows"]} == {"alpha", "beta"} and data["paired"]["only_a"] == 1
    markdown = runner.invoke(app, ["compare", "--out", str(runs), "--format", "markdown", "--model", "beta"]).output
    assert "| beta | (all) | 3 | 1 | 1 | 0.50 |" in markdown and "alpha |" not in markdown
    csv_out = runner.invoke(app, ["compare", "--out", str(runs), "--format", "csv"]).output
    assert "model,task,attempts" in csv_out


def test_cli_review(runs):
    runner = CliRunner()
    shown = runner.invoke(app, ["review", "small/beta/2", "--out", str(runs)])
    assert shown.exit_code == 0
    assert "passed" in shown.output and "round 3: all pass" in shown.output and "return 42" in shown.output
    branch = runner.invoke(app, ["review", "small/beta/2", "--out", str(runs), "--branch"])
    assert branch.output.startswith("wb/small/beta/2\n") and "git -C" in branch.output
    assert runner.invoke(app, ["review", "small/nobody/1", "--out", str(runs)]).exit_code == 2
