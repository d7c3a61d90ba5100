"""`workbench` command line: parse, build config, call the library."""

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
    import importlib.metadata as md

    for dist in ("porting-workbench", "torch", "triton", "transformers", "openai"):
        try:
            console.print(f"{dist:18s} {md.version(dist)}")
        except md.PackageNotFoundError:
            console.print(f"{dist:18s} [red]not installed[/red]")


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


@app.command()
def check(
    task: Path = typer.Argument(..., help="task YAML file"),
    tree: Path = typer.Option(..., "--tree", "-t", help="the candidate tree (a workspace or one of its worktrees)"),
    json_out: Path = typer.Option(None, "--json", help="also write the results here as JSON"),
) -> None:
    """Run TASK's acceptance checks on a tree; exit 0 only if every check passes."""
    import json

    from .checks.runner import run_checks
    from .tasks import TaskSpecError, load_task

    try:
        spec = load_task(task)
    except TaskSpecError as err:
        console.print(f"[red]{err}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    results = run_checks(spec, tree)
    table = Table("check", "status", "category", "seconds", "summary")
    colour = {"pass": "green", "fail": "red", "error": "red", "flaky": "yellow", "skip": "dim"}
    for r in results:
        table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", r.category if r.status != "pass" else "",
                      f"{r.seconds:.1f}", r.summary)
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps([r.model_dump() for r in results], indent=1))
    if not all(r.passed for r in results):
        raise typer.Exit(1)
