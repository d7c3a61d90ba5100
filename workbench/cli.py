"""`workbench` command line: parse, build config, call the library."""

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(
    name="workbench",
    help="Run LLM coding agents on model-porting tasks and compare them.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)  # warnings stay off stdout, which may carry json or csv


def _print_version(value: bool) -> None:
    if value:
        console.print(f"workbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Run LLM coding agents on model-porting tasks and compare them."""


@app.command()
def info() -> None:
    """Print the versions of the pieces a run depends on."""
    from .tasks.sources import installed_release

    for dist in ("porting-workbench", "torch", "triton", "transformers", "openai"):
        console.print(f"{dist:18s} {installed_release(dist) or '[red]not installed[/red]'}")


@app.command()
def tasks(folder: Path = typer.Argument(Path("tasks"), help="folder of task YAML files")) -> None:
    """List the tasks in FOLDER (invalid task files are listed with their errors)."""
    from .tasks import TaskSpecError, load_task

    table = Table("id", "title", "target", "device", "checks", "budget (turns / rounds)")
    problems = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            spec = load_task(path)
        except TaskSpecError as err:
            problems.append(str(err))
            continue
        table.add_row(spec.id, spec.title, spec.target, spec.device, ", ".join(c.kind for c in spec.checks),
                      f"{spec.budget.turns} / {spec.budget.check_rounds}")
    console.print(table if table.row_count else f"no task files in {folder}")
    for problem in problems:
        console.print(f"[red]{problem}[/red]", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)


@app.command()
def prepare(
    task: Path = typer.Argument(..., help="task YAML file"),
    root: Path = typer.Option(Path("workspaces"), "--root", "-r", help="where workspaces live"),
    fresh: bool = typer.Option(False, "--fresh", help="rebuild the workspace from its sources"),
) -> None:
    """Build (or reopen) a task's git workspace and print its base commit."""
    from .tasks import TaskSpecError, create_workspace, load_task
    from .tasks.sources import SourceError

    try:
        ws = create_workspace(load_task(task), root, fresh=fresh)
    except (TaskSpecError, SourceError) as err:
        console.print(f"[red]{err}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{ws.path}  base {ws.base[:12]}")


STATUS_COLOUR = {"pass": "green", "fail": "red", "error": "red", "flaky": "yellow", "skip": "dim"}


def _status(result) -> str:
    return f"[{STATUS_COLOUR[result.status]}]{result.status}[/]"


def _load_or_exit(task: Path):
    from .tasks import TaskSpecError, load_task

    try:
        return load_task(task)
    except TaskSpecError as err:
        console.print(f"[red]{err}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


DEVICE_OPTION = typer.Option(None, "--device", "-d", help="cpu or cuda (default: the task's device)")


@app.command()
def check(
    task: Path = typer.Argument(..., help="task YAML file"),
    tree: Path = typer.Option(None, "--tree", "-t", help="the candidate tree (a workspace or one of its worktrees)"),
    branch: str = typer.Option(None, "--branch", "-b", help="a branch (or commit) of the task's workspace"),
    root: Path = typer.Option(Path("workspaces"), "--root", "-r", help="where workspaces live (with --branch)"),
    device: str = DEVICE_OPTION,
    json_out: Path = typer.Option(None, "--json", help="also write the results here as JSON"),
) -> None:
    """Run TASK's acceptance checks on a tree or a workspace branch; exit 0 only if every check
    passes (or is skipped, like kernel_perf without a GPU)."""
    import contextlib

    from .checks.runner import run_checks
    from .checks.result import accepted
    from .tasks import create_workspace

    spec = _load_or_exit(task)
    if (tree is None) == (branch is None):
        console.print("[red]give exactly one of --tree DIR or --branch REF[/red]")
        raise typer.Exit(2)
    with contextlib.ExitStack() as stack:
        if branch is not None:
            if not (root / spec.id).exists():
                console.print(f"[red]{root / spec.id}: no workspace; run `workbench prepare {task}` first[/red]")
                raise typer.Exit(2)
            try:
                tree = stack.enter_context(create_workspace(spec, root).checkout(branch))
            except ValueError as err:
                console.print(f"[red]{err}[/red]", highlight=False)
                raise typer.Exit(2) from None
        results = run_checks(spec, tree, device=device)
    table = Table("check", "status", "category", "seconds", "summary")
    for r in results:
        table.add_row(r.name, _status(r), r.category if r.status != "pass" else "", f"{r.seconds:.1f}", r.summary)
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps([r.model_dump() for r in results], indent=1))
    if not accepted(results):
        raise typer.Exit(1)


def failure_details(results: list, limit: int = 2000) -> list[str]:
    """A line per check not accepted, with its details as JSON cut at `limit` characters: the
    tokens or tensors a CI log needs to tell a flake from a bug."""
    return [f"{r.name} {r.status}: {json.dumps(r.details, default=str)[:limit]}"
            for r in results if not r.accepted and r.details]


def _validation_table(task_id: str, result) -> Table:
    table = Table("check", "base", "gold", "gold s", "gold summary", title=f"{task_id}: "
                  + ("[green]valid[/]" if result.ok else "[red]NOT valid[/]"), title_justify="left")
    for b, g in zip(result.base, result.gold, strict=True):
        table.add_row(g.name, _status(b), _status(g), f"{g.seconds:.1f}",
                      g.summary if g.accepted else f"[red]{g.summary}[/]")
    return table


@app.command()
def validate(
    task_files: list[Path] = typer.Argument(..., help="task YAML files"),
    root: Path = typer.Option(None, "--root", "-r", help="where to build the workspaces (default: a temp dir)"),
    device: str = DEVICE_OPTION,
    json_out: Path = typer.Option(None, "--json", help="also write every check result (base and gold) to this file"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="tasks validated side by side (their checks are processes)"),
) -> None:
    """Run every check of each task on its base (must fail) and on its gold solution (must pass)."""
    from concurrent.futures import ThreadPoolExecutor

    from .checks.validate import validate_task
    from .tasks.fixtures import FixtureError
    from .tasks.sources import SourceError

    def validate_one(spec):
        try:
            return validate_task(spec, root, device), None
        except (FixtureError, SourceError, OSError) as err:  # this task could not be built: say so, go on
            return None, f"{type(err).__name__}: {err}"

    specs = [_load_or_exit(task) for task in task_files]
    failed, records = [], []
    with ThreadPoolExecutor(jobs) as pool:  # results come back in task order, each as soon as it can
        for spec, (result, error) in zip(specs, pool.map(validate_one, specs)):
            record = {"task": spec.id, "valid": bool(result and result.ok), "device": device or spec.device}
            record.update({"error": error} if error else {"base": [r.model_dump(mode="json") for r in result.base],
                                                          "gold": [r.model_dump(mode="json") for r in result.gold]})
            records.append(record)
            if json_out:  # after each task: a run cut short keeps what it finished
                json_out.write_text(json.dumps(records, indent=1))
            if not record["valid"]:
                failed.append(spec.id)
            if error:
                console.print(f"[red]{spec.id}: NOT valid: its workspace could not be built: {error}[/red]",
                              highlight=False)
                continue
            console.print(_validation_table(spec.id, result))
            for line in [] if result.ok else failure_details(result.gold):
                console.print(f"{spec.id} gold {line}", markup=False, highlight=False)
    if failed:
        console.print(f"[red]not valid: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]{len(task_files)} task(s) valid[/green]")


@app.command()
def models() -> None:
    """List the model registry and whether each model's API key is set."""
    from .agent.registry import RegistryError, load_registry

    try:
        registry = load_registry()
    except RegistryError as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(2) from None
    table = Table("name", "model id", "endpoint", "key variable", "key set", "context", "$ in / out per M")
    for entry in registry.values():
        key = "scripted" if entry.scripted else ("[green]yes[/]" if entry.has_key else "[red]no[/]")
        table.add_row(entry.name, entry.model_id, entry.base_url, entry.api_key_env or "-", key,
                      f"{entry.context_window:,}", f"{entry.prices.input:g} / {entry.prices.output:g}")
    console.print(table)


@app.command()
def run(
    task_files: list[Path] = typer.Argument(..., help="task YAML files"),
    model: list[str] = typer.Option(..., "--model", "-m", help="registry name (repeat for several); `demo` is scripted"),
    attempts: int = typer.Option(1, "--attempts", "-k", min=1, help="attempts per task and model"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="attempts run in parallel (one worktree each)"),
    out: Path = typer.Option(Path("transcripts"), "--out", "-o", help="where attempt records go"),
    workspaces: Path = typer.Option(Path("workspaces"), "--workspaces", help="where task workspaces live"),
    resume: bool = typer.Option(False, "--resume", help="skip finished attempts, continue unfinished ones"),
    base_url: str = typer.Option(None, "--base-url", help="any OpenAI-compatible endpoint (overrides the registry)"),
    api_key_env: str = typer.Option(None, "--api-key-env", help="environment variable holding the API key"),
    device: str = DEVICE_OPTION,
    hints: str = typer.Option("none", "--hints", help="none (for comparisons) or full: the task's hints (the model's "
                                                      "quirks) go in the prompt; recorded as task `<id>+hints`"),
) -> None:
    """Run agents on tasks: the task x model x attempt matrix, with a live view and a summary."""
    from .agent.registry import RegistryError, resolve_model
    from .runs.matrix import Job, MatrixRun
    from .tasks.prompt import HINTS

    if hints not in HINTS:
        console.print(f"[red]--hints must be one of {', '.join(HINTS)}, got {hints!r}[/red]", highlight=False)
        raise typer.Exit(2)
    specs = [_load_or_exit(t) for t in task_files]
    try:
        entries = [resolve_model(m, base_url, api_key_env) for m in model]
    except RegistryError as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(2) from None
    job_list = [Job(spec, entry, n, hints) for spec in specs for entry in entries for n in range(1, attempts + 1)]
    matrix = MatrixRun(job_list, out, workspaces, resume, None if any(e.scripted for e in entries) else base_url,
                       device, console)
    try:
        results = matrix.run(jobs)
    except FileExistsError as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        raise typer.Exit(2) from None
    summary = Table("task", "model", "#", "status", "rounds", "turns", "tokens", "cost $", "wall s", "branch",
                    title="summary", title_justify="left")
    for r in results:
        colour = "green" if r.status == "passed" else "red"
        summary.add_row(r.task_key, r.label, str(r.attempt),
                        f"[{colour}]{r.status}[/]", str(r.rounds), str(r.turns),
                        f"{r.prompt_tokens + r.completion_tokens:,}", f"{r.cost_usd:.4f}", f"{r.wall_s:.0f}", r.branch)
    console.print(summary)
    console.print(f"records: {out}/<task>/<model>/<n>/ (transcript.jsonl, result.json, checks/, patch.diff)")
    if not all(r.status == "passed" for r in results):
        raise typer.Exit(1)


@app.command(name="compare")
def compare_cmd(
    task: list[str] = typer.Option(None, "--task", "-t", help="only these task ids (repeatable)"),
    model: list[str] = typer.Option(None, "--model", "-m", help="only these models (repeatable)"),
    out: Path = typer.Option(Path("transcripts"), "--out", "-o", help="the runs folder"),
    fmt: str = typer.Option("table", "--format", "-f", help="table, markdown, csv or json"),
) -> None:
    """Rank models across tasks from recorded runs (result.json files only)."""
    from .runs.compare import compare, load_results, mcnemar
    from .runs.views import render_rows

    if fmt not in ("table", "markdown", "csv", "json"):
        console.print(f"[red]--format {fmt!r}: choose table, markdown, csv or json[/red]")
        raise typer.Exit(2)
    results, corrupt = load_results(out)
    for bad in corrupt:
        errors.print(f"[yellow]skipped {bad.path}: {bad.error}[/yellow]", highlight=False)
    rows = compare(results, task, model)
    if not rows:
        console.print(f"no recorded runs under {out}")
        raise typer.Exit(1)
    models_seen = list(dict.fromkeys(r.model for r in rows))
    paired = mcnemar(results, *models_seen) if len(models_seen) == 2 else None
    rendered = render_rows(rows, fmt, paired)
    if isinstance(rendered, str):
        print(rendered)
    else:
        console.print(rendered)


@app.command()
def review(
    run_id: str = typer.Argument(..., help="<task>/<model>/<n>, as under the runs folder"),
    out: Path = typer.Option(Path("transcripts"), "--out", "-o", help="the runs folder"),
    full: bool = typer.Option(False, "--full", help="every message, in full"),
    branch: bool = typer.Option(False, "--branch", help="print the branch and the git commands to inspect it"),
    workspaces: Path = typer.Option(Path("workspaces"), "--workspaces", help="where task workspaces live"),
) -> None:
    """Show one attempt: result, check rounds, patch and transcript."""
    from .runs.record import read_result
    from .runs.views import review as review_view

    folder = out / run_id
    result = read_result(folder)
    if result is None:
        console.print(f"[red]{folder}: no readable result.json (unknown run, or still running)[/red]", highlight=False)
        raise typer.Exit(2)
    if branch:
        ws = workspaces.resolve() / result.task
        print(result.branch)
        print(f"git -C {ws} log --stat {result.base[:12]}..{result.branch}\n"
              f"git -C {ws} diff {result.base[:12]} {result.branch}\n"
              f"git -C {ws} worktree list")
        return
    for part in review_view(folder, result, full):
        console.print(part)


@app.command()
def report(
    html_file: Path = typer.Option(..., "--html", help="the page to write"),
    out: Path = typer.Option(Path("transcripts"), "--out", "-o", help="the runs folder"),
) -> None:
    """Write one self-contained HTML page: comparison, pass rate by rounds, every attempt."""
    from .agent.loop import attempt_folder
    from .runs.compare import compare, load_results, mcnemar
    from .runs.report import render_report

    results, corrupt = load_results(out)
    for bad in corrupt:
        errors.print(f"[yellow]skipped {bad.path}: {bad.error}[/yellow]", highlight=False)
    rows = compare(results)
    models_seen = list(dict.fromkeys(r.model for r in rows))
    paired = mcnemar(results, *models_seen) if len(models_seen) == 2 else None
    attempts = [(attempt_folder(out, r.task_key, r.model, r.attempt), r)
                for r in sorted(results, key=lambda r: (r.task_key, r.model, r.attempt))]
    html_file.write_text(render_report(rows, attempts, paired, corrupt), encoding="utf-8")
    console.print(f"wrote {html_file} ({len(results)} attempts)")


if __name__ == "__main__":
    app()
