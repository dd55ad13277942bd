"""The per-variant summary printed after `tunelab eval` and drawn in the report:
each metric's mean with a 95% CI, pass rate, p50/p95 latency, tokens and cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.evals.metrics import BINARY_METRICS
from tunelab.evals.stats import Estimate, mean_ci, percentile
from tunelab.evals.store import ResultRow


@dataclass
class VariantSummary:
    variant: str
    n: int
    errors: int
    metrics: dict[str, Estimate | None] = field(default_factory=dict)
    judges: dict[str, Estimate | None] = field(default_factory=dict)
    pass_rate: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        est = lambda e: None if e is None else e.__dict__  # noqa: E731
        return dict(self.__dict__, metrics={k: est(v) for k, v in self.metrics.items()},
                    judges={k: est(v) for k, v in self.judges.items()})


def summarize(rows: list[ResultRow], metric_names: dict[str, str] | None = None) -> list[VariantSummary]:
    """`metric_names` maps metric id -> metric name, to know which are pass/fail."""
    metric_names = metric_names or {}
    variants: dict[str, list[ResultRow]] = {}
    for r in rows:
        variants.setdefault(r.variant, []).append(r)
    out = []
    for variant, rs in variants.items():
        ok = [r for r in rs if r.error is None]
        s = VariantSummary(variant=variant, n=len(rs), errors=len(rs) - len(ok))
        metric_ids = sorted({m for r in ok for m in r.scores})
        for m in metric_ids:
            s.metrics[m] = mean_ci([r.scores.get(m) for r in ok if r.scores.get(m) is not None])
        judge_ids = sorted({j for r in ok for j in r.judges})
        for j in judge_ids:
            s.judges[j] = mean_ci([r.judges[j]["score"] for r in ok
                                   if j in r.judges and r.judges[j]["score"] is not None])
        passes = [_passed(r, metric_names) for r in ok]
        passes = [p for p in passes if p is not None]
        s.pass_rate = sum(passes) / len(passes) if passes else None
        lat = [r.latency_s for r in ok if r.latency_s is not None]
        s.latency_p50, s.latency_p95 = percentile(lat, 50), percentile(lat, 95)
        s.prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
        s.completion_tokens = sum(r.completion_tokens or 0 for r in ok)
        costs = [r.cost for r in ok if r.cost is not None]
        s.cost = sum(costs) if costs else None
        out.append(s)
    return out


def _passed(r: ResultRow, metric_names: dict[str, str]) -> bool | None:
    """All pass/fail checks on the row pass: binary metrics and rubric thresholds."""
    checks = [v == 1.0 for m, v in r.scores.items() if metric_names.get(m, m) in BINARY_METRICS and v is not None]
    checks += [j["passed"] for j in r.judges.values() if j.get("passed") is not None]
    return all(checks) if checks else None
