"""What a check returns: `{name, status, category, summary, details}` (ARCHITECTURE.md)."""

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["pass", "fail", "error", "skip", "flaky"]
CATEGORIES = ("shape_mismatch", "missing_weights", "unused_weights", "nondeterministic", "diverges_from_reference",
              "import_error", "timeout", "crash", "forbidden_import", "forbidden_op", "tampering", "command_failed",
              "memory_limit", "too_slow", "not_w4a8", "ignores_attention_mask", "contract_violation", "infrastructure",
              "none")
ACCEPTED = ("pass", "skip")  # a skipped check (kernel_perf without a GPU) blocks nothing


class CheckResult(BaseModel):
    name: str
    status: Status
    category: str = Field("none", description=f"failure class, one of {CATEGORIES}")
    summary: str = Field(description="one line an agent can act on")
    details: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def accepted(self) -> bool:
        return self.status in ACCEPTED


def accepted(results: list[CheckResult]) -> bool:
    """Every check passed or was skipped: what ends an attempt, validates a gold, exits 0."""
    return all(r.accepted for r in results)


def settle_flaky(first: CheckResult, rerun: CheckResult) -> CheckResult:
    """A failing check is run once more: if the two runs disagree, the result is `flaky`."""
    if first.status == rerun.status:
        return first
    return first.model_copy(update={
        "status": "flaky", "summary": f"flaky: {first.status} then {rerun.status}: {first.summary}",
        "details": {**first.details, "rerun": rerun.model_dump()}})
