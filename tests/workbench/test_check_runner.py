"""`workbench check` over a prepared workspace: the runner, re-runs, the CLI's exit code and JSON."""

import json

import pytest
from typer.testing import CliRunner

from workbench.checks.runner import run_checks
from workbench.cli import app
from workbench.tasks import create_workspace, load_task

TASK = """\
id: check_demo
title: Check demo
target: port.model
reference: adapters.qwen3
sources:
  - {dir: tasks/check_demo/start}
prompt: Write port/model.py.
checks:
  - {kind: import}
  - {kind: no_forbidden_imports}
  - {kind: protected_paths}
  - {kind: command, name: smoke, cmd: "python -c 'import port.model as m; assert m.answer() == 42'"}
  - {kind: pytest, args: tests}
"""


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path / "cache"))
    start = tmp_path / "repo/tasks/check_demo/start"
    (start / "port").mkdir(parents=True)
    (start / "port/__init__.py").write_text("")
    (start / "tests").mkdir()
    (start / "tests/test_model.py").write_text("import port.model as m\n\ndef test_answer():\n    assert m.answer() == 42\n")
    task = tmp_path / "repo/tasks/check_demo.yaml"
    task.write_text(TASK)
    ws = create_workspace(load_task(task), tmp_path / "ws")
    return task, ws


def test_base_fails_and_a_good_port_passes(workspace):
    task, ws = workspace
    spec = load_task(task)
    base = {r.name: r for r in run_checks(spec, ws.path)}
    assert base["import"].category == "import_error" and base["smoke"].status == "fail"
    (ws.path / "port/model.py").write_text("def answer():\n    return 42\n")
    results = run_checks(spec, ws.path)
    assert [r.status for r in results] == ["pass"] * 5, [r.summary for r in results]
    assert all(r.seconds > 0 for r in results)


def test_cheating_ports_fail_the_named_check(workspace):
    task, ws = workspace
    spec = load_task(task)
    (ws.path / "port/model.py").write_text("from kernels import w4a8_gemm\n\ndef answer():\n    return 42\n")
    (ws.path / "tests/test_model.py").write_text("def test_answer():\n    pass\n")
    by = {r.name: r for r in run_checks(spec, ws.path)}
    assert by["no_forbidden_imports"].summary.startswith("port/model.py:1: imports kernels")
    assert by["protected_paths"].category == "tampering" and "tests/test_model.py" in by["protected_paths"].summary
    assert by["import"].category == "forbidden_import"


def test_cli_exit_code_and_json(workspace, tmp_path):
    task, ws = workspace
    runner = CliRunner()
    failed = runner.invoke(app, ["check", str(task), "--tree", str(ws.path)])
    assert failed.exit_code == 1 and "import_error" in failed.output
    (ws.path / "port/model.py").write_text("def answer():\n    return 42\n")
    out = tmp_path / "results.json"
    passed = runner.invoke(app, ["check", str(task), "--tree", str(ws.path), "--json", str(out)])
    assert passed.exit_code == 0, passed.output
    assert [r["status"] for r in json.loads(out.read_text())] == ["pass"] * 5


def test_checks_missing_what_they_need_are_errors_not_failures(workspace, tmp_path):
    task, ws = workspace
    spec = load_task(task).model_copy(update={"checks": []})
    from workbench.tasks.spec import CheckSpec

    spec.checks = [CheckSpec(kind="numerics"), CheckSpec(kind="command")]
    results = run_checks(spec, ws.path)
    assert results[0].status == "error" and "fixture" in results[0].summary
    assert results[1].status == "error" and "cmd" in results[1].summary
