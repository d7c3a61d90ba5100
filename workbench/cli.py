"""`workbench` command line: parse, build config, call the library (commands arrive with the
tasks, run, compare and review issues)."""

import typer
from rich.console import Console

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
