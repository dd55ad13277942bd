"""The ladder: zero-shot -> few-shot -> LoRA-tuned, on one held-out set.

Each rung is a variant (prompt @ provider) of one eval run. For each, quality (a
metric's or judge's mean with its 95% CI from stats.interval: Wilson for pass/fail
metrics, the bootstrap otherwise, and the count of outputs without a value beside it),
latency, tokens and cost per item, and the verdict a user needs: the cheapest rung
whose quality clears the bar.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.evals.selection import value
from tunelab.evals.stats import interval, percentile
from tunelab.evals.store import ResultRow


@dataclass
class Rung:
    name: str
    variant: str
    n: int
    errors: int
    quality: float | None
    ci_low: float | None
    ci_high: float | None
    latency_p50_s: float | None
    prompt_tokens_per_item: float
    completion_tokens_per_item: float
    cost_per_1k_items: float | None
    unparsed: int = 0          # judge metric: verdicts whose reply could not be parsed (no quality value)


def ladder(rows: list[ResultRow], rungs: dict[str, str], metric: str) -> list[Rung]:
    """`rungs` maps a rung's name to its variant id, in ladder order; `metric` is a metric id
    or 'judge:ID' (selection.RunNames.measure checks a user's name)."""
    out = []
    # Pass/fail is decided over the whole run, so every rung gets the same kind of interval.
    binary = all(value(r, metric) in (None, 0.0, 1.0) for r in rows)
    for name, variant in rungs.items():
        rs = [r for r in rows if r.variant == variant]
        if not rs:
            raise ValueError(f"rung {name!r}: no results for variant {variant!r}")
        ok = [r for r in rs if r.error is None]
        scores = [value(r, metric) for r in ok]
        est = interval(scores, binary=binary)
        unparsed = sum(1 for r in ok if metric.startswith("judge:") and (r.judges.get(metric[6:]) or {}).get("parse_error"))
        costs = [r.cost for r in ok if r.cost is not None]
        out.append(Rung(
            name=name, variant=variant, n=len(rs), errors=len(rs) - len(ok),
            quality=est.mean if est else None, ci_low=est.low if est else None, ci_high=est.high if est else None,
            latency_p50_s=percentile([r.latency_s for r in ok if r.latency_s is not None], 50),
            prompt_tokens_per_item=sum(r.prompt_tokens or 0 for r in ok) / max(len(ok), 1),
            completion_tokens_per_item=sum(r.completion_tokens or 0 for r in ok) / max(len(ok), 1),
            cost_per_1k_items=1000 * sum(costs) / len(costs) if costs else None, unparsed=unparsed,
        ))  # fmt: skip
    return out


def good_enough(rungs: list[Rung], bar: float) -> Rung | None:
    """The cheapest rung (by cost, then prompt tokens) whose quality reaches `bar`."""
    passing = [r for r in rungs if r.quality is not None and r.quality >= bar]
    key = lambda r: (r.cost_per_1k_items if r.cost_per_1k_items is not None else 0.0, r.prompt_tokens_per_item)  # noqa: E731
    return min(passing, key=key, default=None)
