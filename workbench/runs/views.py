"""Rendering for `workbench compare` (rich table, markdown, csv, json) and `workbench review`."""

import csv
import io
import json
from pathlib import Path

from rich.console import Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..checks.result import ACCEPTED
from .compare import Paired, Row
from .record import AttemptResult, model_label, read_events

COLUMNS = ("model", "task", "attempts", "infra", "passed", "pass@1", "pass@k", "<=1 round", "<=2 rounds",
           "<=3 rounds", "median rounds", "median turns", "tokens", "cost/success $", "wall s", "failures")


def _cells(row: Row) -> list[str]:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    return [model_label(row.model, row.scripted), row.task, str(row.attempts), str(row.infra),
            str(row.passed), f"{row.pass_at_1:.2f}", f"{row.pass_at_k:.2f} (k={row.k})",
            *(f"{row.within_rounds[i]:.2f}" for i in (1, 2, 3)), num(row.median_rounds, "g"),
            num(row.median_turns, "g"), f"{row.tokens:,}", num(row.cost_per_success, ".4f"), f"{row.wall_s:.0f}",
            ", ".join(f"{k} {v}" for k, v in row.failures.most_common()) or "-"]


def render_rows(rows: list[Row], fmt: str, paired: Paired | None = None):
    """A rich renderable for `table`, a string for markdown / csv / json."""
    if fmt == "json":
        data = [{"model": r.model, "task": r.task, "scripted": r.scripted, "attempts": r.attempts,
                 "infrastructure_errors": r.infra, "passed": r.passed, "pass_at_1": r.pass_at_1,
                 "pass_at_k": r.pass_at_k, "k": r.k, "pass_within_rounds": r.within_rounds,
                 "median_rounds": r.median_rounds, "median_turns": r.median_turns, "tokens": r.tokens,
                 "cost_usd": r.cost_usd, "cost_per_success_usd": r.cost_per_success, "wall_s": r.wall_s,
                 "failures": dict(r.failures)} for r in rows]
        return json.dumps({"rows": data, "paired": vars(paired) if paired else None}, indent=1)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        writer.writerows(_cells(r) for r in rows)
        return buffer.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
        if paired:
            lines.append(f"\n{paired.model_a} vs {paired.model_b}: {paired.verdict}")
        return "\n".join(lines)
    table = Table(*COLUMNS, title="models ranked by pass@1 (infrastructure errors excluded from rates)",
                  title_justify="left")
    for r in rows:
        style = "bold" if r.task == "(all)" else None
        table.add_row(*_cells(r), style=style)
    if paired:
        return Group(table, Text(f"{paired.model_a} vs {paired.model_b}: {paired.verdict} "
                                 f"(only {paired.model_a}: {paired.only_a}, only {paired.model_b}: {paired.only_b})"))
    return table


def review(folder: Path, result: AttemptResult, full: bool = False) -> list:
    """Renderables for one attempt: summary, check rounds, patch, transcript."""
    summary = (f"[bold]{result.task_key}[/] / {result.label} / attempt {result.attempt}: [bold]{result.status}[/] - {result.reason}\n"
               f"rounds {result.rounds}, turns {result.turns}, tokens {result.prompt_tokens + result.completion_tokens:,}"
               f", cost ${result.cost_usd:.4f}, wall {result.wall_s:.0f} s\nbranch {result.branch} "
               f"(base {result.base[:10]}, head {result.head[:10]})")
    out: list = [Panel(summary, title="attempt")]
    rounds = Table("round", "check", "status", "category", "summary", title="check rounds", title_justify="left")
    for i, checks in enumerate(result.check_rounds, 1):
        for c in checks:
            rounds.add_row(str(i), c["name"], c["status"], c["category"] if c["status"] != "pass" else "", c["summary"])
    out.append(rounds)
    patch = (folder / "patch.diff").read_text() if (folder / "patch.diff").exists() else ""
    out.append(Panel(Syntax(patch or "(no changes)", "diff", word_wrap=True), title="patch against base"))
    transcript = Table("#", "who", "what", title="transcript" + ("" if full else " (condensed)"),
                       title_justify="left", show_lines=full)
    for i, event in enumerate(read_events(folder)):
        if event["kind"] == "check_round":
            failing = [c["name"] for c in event["results"] if c["status"] not in ACCEPTED]
            transcript.add_row(str(i), "checks", f"round {event['round']}: " +
                               (f"FAIL {', '.join(failing)}" if failing else "all pass"))
        elif event["kind"] == "message":
            m = event["message"]
            if m["role"] == "assistant":
                calls = ", ".join(f"{c['function']['name']}({_short(c['function']['arguments'], full)})"
                                  for c in m.get("tool_calls") or [])
                transcript.add_row(str(i), "assistant", _short(m.get("content") or "", full, 300) +
                                   (f"\n-> {calls}" if calls else ""))
            elif full or m["role"] == "user":
                transcript.add_row(str(i), m["role"], _short(str(m.get("content")), full, 200))
        elif event["kind"] in ("end", "resume"):
            transcript.add_row(str(i), event["kind"], json.dumps({k: v for k, v in event.items() if k not in ("t", "kind")}))
    out.append(transcript)
    return out


def _short(text: str, full: bool, limit: int = 80) -> str:
    text = str(text)
    return text if full or len(text) <= limit else text[:limit] + "..."
