"""Rank models across tasks from recorded runs only (`result.json` files under the runs folder).

Per (model, task) and per model overall: attempts, pass@1 and unbiased pass@k (Chen et al.
2021: 1 - C(n-c, k) / C(n, k), averaged over tasks), pass within 1, 2, 3 check rounds (how much
the feedback helps), median rounds and turns of the passing attempts, tokens, cost per success,
wall time, and failure classes. Infrastructure errors are counted apart and left out of every
rate: a provider outage says nothing about the model. Two models on the same tasks get a paired
test (exact McNemar on per-(task, attempt) outcomes).
"""

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .record import AttemptResult

INFRA = "infrastructure_error"


@dataclass
class Corrupt:
    path: Path
    error: str


def load_results(root: Path) -> tuple[list[AttemptResult], list[Corrupt]]:
    """Every result.json under `root`; unreadable or half-written ones are reported, not fatal."""
    results, corrupt = [], []
    for path in sorted(Path(root).rglob("result.json")):
        try:
            results.append(AttemptResult.model_validate_json(path.read_text()))
        except (OSError, ValueError) as err:
            corrupt.append(Corrupt(path, str(err).splitlines()[0][:200]))
    return results, corrupt


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n attempts with c passes."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class Row:
    model: str
    task: str  # "(all)" for the per-model summary
    scripted: bool = False
    attempts: int = 0
    infra: int = 0
    passed: int = 0
    pass_at_1: float = 0.0
    pass_at_k: float = 0.0
    k: int = 1
    within_rounds: dict[int, float] = field(default_factory=dict)
    median_rounds: float | None = None
    median_turns: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    failures: Counter = field(default_factory=Counter)

    @property
    def cost_per_success(self) -> float | None:
        return self.cost_usd / self.passed if self.passed else None


def _row(model: str, task: str, results: list[AttemptResult], per_task: dict[str, list[AttemptResult]]) -> Row:
    valid = [r for r in results if r.status != INFRA]
    wins = [r for r in valid if r.status == "passed"]
    counts = [(len(v), sum(r.status == "passed" for r in v)) for v in
              ([r for r in rs if r.status != INFRA] for rs in per_task.values())]
    k = max(1, min((n for n, _ in counts), default=0))
    rates_1 = [pass_at_k(n, c, 1) for n, c in counts if n]
    rates_k = [pass_at_k(n, c, k) for n, c in counts if n]
    return Row(
        model=model, task=task, scripted=any(r.scripted for r in results), attempts=len(results),
        infra=len(results) - len(valid), passed=len(wins),
        pass_at_1=statistics.fmean(rates_1) if rates_1 else 0.0,
        pass_at_k=statistics.fmean(rates_k) if rates_k else 0.0, k=k,
        within_rounds={i: (sum(r.rounds <= i for r in wins) / len(valid) if valid else 0.0) for i in (1, 2, 3)},
        median_rounds=statistics.median([r.rounds for r in wins]) if wins else None,
        median_turns=statistics.median([r.turns for r in wins]) if wins else None,
        tokens=sum(r.prompt_tokens + r.completion_tokens for r in results),
        cost_usd=sum(r.cost_usd for r in results), wall_s=sum(r.wall_s for r in results),
        failures=Counter(r.failure_class or r.status for r in results if r.status != "passed"))


def compare(results: list[AttemptResult], tasks: list[str] | None = None,
            models: list[str] | None = None) -> list[Row]:
    """Rows per (model, task), then one "(all)" row per model; models ranked by pass@1."""
    chosen = [r for r in results if (not tasks or r.task in tasks or r.task_key in tasks)
              and (not models or r.model in models)]
    grouped: dict[str, dict[str, list[AttemptResult]]] = defaultdict(lambda: defaultdict(list))
    for r in chosen:  # runs with the hints (`<task>+hints`) are a task of their own
        grouped[r.model][r.task_key].append(r)
    rows = []
    for model, per_task in grouped.items():
        overall = _row(model, "(all)", [r for rs in per_task.values() for r in rs], per_task)
        rows.append([overall] + [_row(model, task, rs, {task: rs}) for task, rs in sorted(per_task.items())])
    rows.sort(key=lambda group: (-group[0].pass_at_1, group[0].model))
    return [row for group in rows for row in group]


@dataclass
class Paired:
    model_a: str
    model_b: str
    pairs: int
    only_a: int  # pairs where A passed and B did not
    only_b: int
    p_value: float

    @property
    def verdict(self) -> str:
        if self.p_value < 0.05:
            return f"{self.model_a if self.only_a > self.only_b else self.model_b} is better (p = {self.p_value:.3f})"
        return f"no significant difference (p = {self.p_value:.3f}, {self.pairs} pairs)"


def mcnemar(results: list[AttemptResult], model_a: str, model_b: str) -> Paired:
    """Exact McNemar test over (task, attempt) pairs both models ran (infrastructure errors dropped)."""
    outcome = {(r.model, r.task_key, r.attempt): r.status == "passed" for r in results if r.status != INFRA}
    keys = {(t, n) for (m, t, n) in outcome if m == model_a} & {(t, n) for (m, t, n) in outcome if m == model_b}
    only_a = sum(outcome[(model_a, t, n)] and not outcome[(model_b, t, n)] for t, n in keys)
    only_b = sum(outcome[(model_b, t, n)] and not outcome[(model_a, t, n)] for t, n in keys)
    discordant = only_a + only_b
    tail = sum(math.comb(discordant, i) for i in range(min(only_a, only_b) + 1)) / 2**discordant if discordant else 1.0
    return Paired(model_a, model_b, len(keys), only_a, only_b, min(1.0, 2 * tail))
