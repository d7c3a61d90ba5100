"""Task specs: validation errors that name file, line and field; sources; git workspaces."""

import textwrap
import zipfile

import git
import pytest

from workbench.tasks import TaskSpecError, create_workspace, load_task
from workbench.tasks.sources import SourceError, glob_regex

VALID = """\
id: demo_task
title: Demo
target: w4a8_inference.qwen3
reference: adapters.qwen3
sources:
{sources}
prompt: |
  Port the model.
checks:
  - {{kind: import}}
  - {{kind: numerics, rtol: 0.02}}
solution: {{dir: tasks/demo_task/solution}}
"""


@pytest.fixture
def repo_root(tmp_path):
    """A repository with tasks/ holding a task's start files and its gold solution."""
    root = tmp_path / "repo"
    (root / "tasks/demo_task/start/w4a8_inference").mkdir(parents=True)
    (root / "tasks/demo_task/start/w4a8_inference/__init__.py").write_text("# start\n")
    (root / "tasks/demo_task/start/NOTES.md").write_text("notes\n")
    (root / "tasks/demo_task/solution").mkdir(parents=True)
    (root / "tasks/demo_task/solution/GOLD_SECRET.py").write_text("answer = 42\n")
    return root


def write_task(root, sources="  - {dir: tasks/demo_task/start}", text=None):
    path = root / "tasks" / "demo_task.yaml"
    path.write_text(text if text is not None else VALID.format(sources=sources))
    return path


def test_valid_spec_loads_with_defaults(repo_root):
    spec = load_task(write_task(repo_root))
    assert spec.id == "demo_task" and spec.budget.turns == 40 and spec.device == "cpu"
    assert spec.checks[1].kind == "numerics" and spec.checks[1].params == {"rtol": 0.02}
    assert spec.repo_root == repo_root.resolve()


@pytest.mark.parametrize("edit,expected", [
    (("{kind: import}", "{kind: imports}"), r"demo_task\.yaml:10: checks\.0\.kind: Input should be 'import', 'shapes'"),
    (("prompt: |", "budget: {turns: 0}\nprompt: |"), r"demo_task\.yaml:7: budget\.turns: Input should be greater than 0"),
    (("{dir: tasks/demo_task/start}", "{url: x}"), r"demo_task\.yaml:6: sources\.0: a source needs one of the keys pip:, dir:, git:"),
    (("{dir: tasks/demo_task/start}", "{pip: sglang==0.4.4}"), r"demo_task\.yaml:6: sources\.0\.files: Field required"),
    (("target: w4a8_inference.qwen3\n", ""), r"demo_task\.yaml:1: target: Field required"),
    (("title: Demo", "title: Demo\ncolour: red"), r"demo_task\.yaml:3: colour: Extra inputs are not permitted"),
])
def test_errors_name_file_line_and_field(repo_root, edit, expected):
    text = VALID.format(sources="  - {dir: tasks/demo_task/start}").replace(*edit)
    with pytest.raises(TaskSpecError, match=expected):
        load_task(write_task(repo_root, text=text))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(TaskSpecError, match="cannot read task file"):
        load_task(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("id: [unclosed\n")
    with pytest.raises(TaskSpecError, match="bad.yaml: not valid YAML"):
        load_task(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(TaskSpecError, match="list.yaml:1: a task file is a mapping"):
        load_task(tmp_path / "list.yaml")


def test_glob_semantics():
    assert glob_regex("src/*.py").match("src/a.py") and not glob_regex("src/*.py").match("src/x/a.py")
    assert glob_regex("**/*.py").match("a.py") and glob_regex("**/*.py").match("x/y/a.py")


def make_wheel(folder):
    wheel = folder / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo_pkg/__init__.py", "")
        z.writestr("demo_pkg/layers/int8_kernel.py", "KERNEL = 1\n")
        z.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
        z.writestr("demo_pkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    return wheel


def make_upstream(folder):
    repo = git.Repo.init(folder)
    (folder / "src").mkdir()
    (folder / "src/modeling.py").write_text("VERSION = 1\n")
    repo.index.add(["src/modeling.py"])
    repo.index.commit("v1")
    repo.create_tag("v1")
    (folder / "src/modeling.py").write_text("VERSION = 2\n")
    repo.index.add(["src/modeling.py"])
    repo.index.commit("v2")
    return repo


def test_workspace_from_all_three_source_kinds(repo_root, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    make_upstream(tmp_path / "upstream")
    sources = textwrap.indent(textwrap.dedent(f"""\
        - {{dir: tasks/demo_task/start}}
        - {{pip: demo-pkg==1.0, files: ["demo_pkg/layers/*.py"], to: vendor/demo, find_links: "{wheels}"}}
        - {{git: "{tmp_path / 'upstream'}", ref: v1, files: ["src/*.py"], to: vendor/up}}
        """), "  ")
    spec = load_task(write_task(repo_root, sources))
    cache = tmp_path / "cache"
    ws = create_workspace(spec, tmp_path / "ws", cache)
    assert (ws.path / "w4a8_inference/__init__.py").read_text() == "# start\n"
    assert (ws.path / "vendor/demo/demo_pkg/layers/int8_kernel.py").read_text() == "KERNEL = 1\n"
    assert not (ws.path / "vendor/demo/demo_pkg/__init__.py").exists()  # only the listed files
    assert (ws.path / "vendor/up/src/modeling.py").read_text() == "VERSION = 1\n"  # the ref, not HEAD

    base = ws.repo.commit(ws.base)
    assert base.parents == () and ws.repo.head.commit == base  # no history before the base
    tracked = {b.path for b in base.tree.traverse()}
    assert not any("GOLD_SECRET" in p or "solution" in p for p in tracked)

    # cached sources never touch the network (or the find-links folder) again; same base hash
    for wheel in wheels.iterdir():
        wheel.unlink()
    again = create_workspace(spec, tmp_path / "ws2", cache)
    assert again.base == ws.base


def test_source_errors_are_named(repo_root, tmp_path):
    spec = load_task(write_task(repo_root, "  - {dir: tasks/demo_task/start, files: ['*.rs']}"))
    with pytest.raises(SourceError, match=r"source dir: tasks/demo_task/start: no file matches '\*\.rs'"):
        create_workspace(spec, tmp_path / "ws", tmp_path / "cache")
    assert not (tmp_path / "ws" / "demo_task").exists()  # nothing half-built left behind
    make_upstream(tmp_path / "upstream")
    spec = load_task(write_task(repo_root, f"  - {{git: '{tmp_path / 'upstream'}', ref: v9, files: ['*']}}"))
    with pytest.raises(SourceError, match="cannot get ref 'v9'"):
        create_workspace(spec, tmp_path / "ws", tmp_path / "cache")
    spec = load_task(write_task(repo_root, "  - {dir: tasks/demo_task/start, to: ../outside}"))
    with pytest.raises(SourceError, match="must stay inside the workspace"):
        create_workspace(spec, tmp_path / "ws", tmp_path / "cache")


def test_attempt_branches_and_worktrees(repo_root, tmp_path):
    ws = create_workspace(load_task(write_task(repo_root)), tmp_path / "ws", tmp_path / "cache")
    first = ws.new_attempt("gpt-5.1", 1)
    assert first.branch == "wb/demo_task/gpt-5.1/1" and ws.repo.active_branch.name == first.branch
    parallel = ws.new_attempt("org/model name", 2, worktree=True)
    assert parallel.branch == "wb/demo_task/org-model-name/2"
    assert (parallel.path / "w4a8_inference/__init__.py").exists()
    assert git.Repo(parallel.path).active_branch.name == parallel.branch
    with pytest.raises(ValueError, match="exists already"):
        ws.new_attempt("gpt-5.1", 1)
    reopened = create_workspace(load_task(write_task(repo_root)), tmp_path / "ws", tmp_path / "cache")
    assert reopened.base == ws.base
    (tmp_path / "ws" / "other").mkdir()
    other = load_task(write_task(repo_root)).model_copy(update={"id": "other"})
    with pytest.raises(ValueError, match="not a workspace"):
        create_workspace(other, tmp_path / "ws", tmp_path / "cache")


def test_cli_tasks_and_prepare(repo_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app

    monkeypatch.setenv("WB_CACHE_DIR", str(tmp_path / "cache"))
    write_task(repo_root)
    runner = CliRunner()
    listed = runner.invoke(app, ["tasks", str(repo_root / "tasks")], terminal_width=200)
    assert listed.exit_code == 0 and "demo_task" in listed.output and "numerics" in listed.output
    done = runner.invoke(app, ["prepare", str(repo_root / "tasks/demo_task.yaml"), "--root", str(tmp_path / "ws")])
    assert done.exit_code == 0 and "base " in done.output and (tmp_path / "ws/demo_task/.git").exists()
    (repo_root / "tasks" / "broken.yaml").write_text("id: Bad Id\n")
    listed = runner.invoke(app, ["tasks", str(repo_root / "tasks")], terminal_width=200)
    assert listed.exit_code == 1 and "broken.yaml:1: id: String should match pattern" in listed.output
