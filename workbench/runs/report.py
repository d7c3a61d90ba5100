"""`workbench report --html FILE`: one self-contained page (no network resources, no scripts
from anywhere): the comparison table, an inline SVG chart of pass rate against check rounds per
model, and for each attempt its check rounds, patch and condensed transcript."""

import html
from pathlib import Path

from ..checks.result import ACCEPTED
from .compare import Corrupt, Paired, Row
from .record import AttemptResult, read_events
from .views import COLUMNS, _cells

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
STYLE = """
body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.all td { font-weight: bold; }
.pass { color: #2a7d2a; } .fail, .error, .flaky { color: #b22; } .skip { color: #888; }
pre { background: #f8f8f8; padding: 8px; overflow-x: auto; font-size: 12px; max-height: 30em; }
.add { color: #2a7d2a; } .del { color: #b22; }
details { margin: 0.5em 0 1.5em; }
"""


def _esc(text) -> str:
    return html.escape(str(text))


def comparison_table(rows: list[Row]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in COLUMNS)
    body = "".join(f"<tr class='{'all' if r.task == '(all)' else ''}'>" + "".join(f"<td>{_esc(c)}</td>" for c in _cells(r))
                   + "</tr>" for r in rows)
    return f"<table id='comparison'><tr>{head}</tr>{body}</table>"


def rounds_chart(rows: list[Row], width: int = 520, height: int = 220) -> str:
    """Pass rate within 1, 2, 3 check rounds, one line per model (the "(all)" rows)."""
    pad, legend = 40, 140  # left/bottom axis room; right room for the model names
    models = [r for r in rows if r.task == "(all)"]
    x = lambda i: pad + (i - 1) * (width - pad - legend) / 2  # noqa: E731
    y = lambda v: height - pad - v * (height - 2 * pad)  # noqa: E731
    parts = [f"<svg id='rounds-chart' xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>",
             f"<line x1='{pad}' y1='{y(0)}' x2='{x(3)}' y2='{y(0)}' stroke='#999'/>",
             f"<line x1='{pad}' y1='{y(0)}' x2='{pad}' y2='{y(1)}' stroke='#999'/>",
             f"<text x='{pad - 30}' y='{y(1) + 4}' font-size='11'>100%</text>",
             f"<text x='{pad - 22}' y='{y(0) + 4}' font-size='11'>0%</text>"]
    parts += [f"<text x='{x(i) - 20}' y='{height - pad + 16}' font-size='11'>&lt;= {i} round{'s' * (i > 1)}</text>"
              for i in (1, 2, 3)]
    for n, row in enumerate(models):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join(f"{x(i):.1f},{y(row.within_rounds[i]):.1f}" for i in (1, 2, 3))
        parts.append(f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/>")
        parts.append(f"<text x='{x(3) + 8}' y='{y(row.within_rounds[3]) + 4 + 12 * n}' font-size='11' "
                     f"fill='{colour}'>{_esc(row.model)}</text>")
    return "".join(parts) + "</svg>"


def _diff(patch: str) -> str:
    lines = []
    for line in patch.splitlines():
        css = "add" if line.startswith("+") and not line.startswith("+++") else \
              "del" if line.startswith("-") and not line.startswith("---") else ""
        lines.append(f"<span class='{css}'>{_esc(line)}</span>" if css else _esc(line))
    return "<pre>" + "\n".join(lines) + "</pre>"


def attempt_section(folder: Path, result: AttemptResult) -> str:
    rows = "".join(f"<tr><td>{i}</td><td>{_esc(c['name'])}</td><td class='{_esc(c['status'])}'>{_esc(c['status'])}</td>"
                   f"<td>{_esc(c['category'] if c['status'] != 'pass' else '')}</td><td>{_esc(c['summary'])}</td></tr>"
                   for i, checks in enumerate(result.check_rounds, 1) for c in checks)
    transcript = []
    for event in read_events(folder):
        if event["kind"] == "message" and event["message"]["role"] == "assistant":
            m = event["message"]
            calls = ", ".join(c["function"]["name"] for c in m.get("tool_calls") or [])
            transcript.append(f"assistant: {m.get('content') or ''}" + (f"  -> {calls}" if calls else ""))
        elif event["kind"] == "check_round":
            failing = [c["name"] for c in event["results"] if c["status"] not in ACCEPTED]
            transcript.append(f"checks round {event['round']}: " + (f"FAIL {', '.join(failing)}" if failing else "all pass"))
    patch = (folder / "patch.diff").read_text() if (folder / "patch.diff").exists() else ""
    return (f"<h3 id='{_esc(result.task_key)}-{_esc(result.model)}-{result.attempt}'>{_esc(result.task_key)} / {_esc(result.label)} / "
            f"attempt {result.attempt}: <span class='{'pass' if result.status == 'passed' else 'fail'}'>"
            f"{_esc(result.status)}</span></h3><p>{_esc(result.reason)}; rounds {result.rounds}, turns {result.turns}, "
            f"cost ${result.cost_usd:.4f}, branch <code>{_esc(result.branch)}</code></p>"
            f"<table><tr><th>round</th><th>check</th><th>status</th><th>category</th><th>summary</th></tr>{rows}</table>"
            f"<details><summary>patch ({len(patch.splitlines())} lines)</summary>{_diff(patch)}</details>"
            f"<details><summary>transcript</summary><pre>{_esc(chr(10).join(transcript))}</pre></details>")


def render_report(rows: list[Row], results: list[tuple[Path, AttemptResult]], paired: Paired | None,
                  corrupt: list[Corrupt]) -> str:
    skipped = "".join(f"<li>{_esc(c.path)}: {_esc(c.error)}</li>" for c in corrupt)
    verdict = f"<p>{_esc(paired.model_a)} vs {_esc(paired.model_b)}: {_esc(paired.verdict)}</p>" if paired else ""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>porting-workbench report</title>"
            f"<style>{STYLE}</style></head><body><h1>porting-workbench report</h1>"
            "<h2>Models ranked by pass@1</h2><p>Infrastructure errors are counted apart and left out of the rates.</p>"
            f"{comparison_table(rows)}{verdict}<h2>Pass rate against check rounds</h2>{rounds_chart(rows)}"
            + (f"<h2>Skipped records</h2><ul>{skipped}</ul>" if skipped else "")
            + "<h2>Attempts</h2>" + "".join(attempt_section(folder, r) for folder, r in results) + "</body></html>")
