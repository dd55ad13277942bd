"""The ladder: zero-shot -> few-shot -> LoRA-tuned, on one held-out set.

Each rung is a variant (prompt @ provider) of an eval run. For each, quality (a
metric's or judge's mean with its 95% CI from stats.interval: Wilson for pass/fail
metrics, the bootstrap otherwise, and the count of outputs without a value beside it),
latency, tokens and cost per item, and the verdict a user needs: the cheapest rung
whose quality clears the bar.

Two costs per rung. On your own machine a request costs machine time: with
`concurrency` requests always in flight, Little's law gives the throughput
(items/s = requests in flight / mean latency), and a price per hour turns it into
dollars. On a hosted API the same tokens cost its list price per token.
"""

from __future__ import annotations

from collections.abc import Callable
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
    cost_per_1k_items: float | None  # at the provider's configured price per token
    unparsed: int = 0          # judge metric: verdicts whose reply could not be parsed (no quality value)
    latency_p95_s: float | None = None
    items_per_s: float | None = None  # with `concurrency` requests in flight; None when not given


@dataclass(frozen=True)
class HostedPrice:
    """A hosted API's list price, and when it was read (prices change)."""

    model: str
    input_per_1m: float
    output_per_1m: float
    as_of: str


def machine_cost_per_1k(rung: Rung, dollars_per_hour: float) -> float | None:
    """What 1,000 items cost in machine time at the throughput this rung measured."""
    if not rung.items_per_s:
        return None
    return 1000 / rung.items_per_s * dollars_per_hour / 3600


def hosted_cost_per_1k(rung: Rung, price: HostedPrice) -> float:
    """What the same tokens in and out cost on a hosted API, per 1,000 items."""
    per_item = rung.prompt_tokens_per_item * price.input_per_1m + rung.completion_tokens_per_item * price.output_per_1m
    return 1000 * per_item / 1e6


def ladder(rows: list[ResultRow], rungs: dict[str, str], metric: str, concurrency: int | None = None) -> list[Rung]:
    """`rungs` maps a rung's name to its variant id, in ladder order; `metric` is a metric id
    or 'judge:ID' (selection.RunNames.measure checks a user's name). `concurrency`: the requests
    the eval kept in flight, which turns latencies into throughput."""
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
        latencies = [r.latency_s for r in ok if r.latency_s is not None]
        out.append(Rung(
            name=name, variant=variant, n=len(rs), errors=len(rs) - len(ok),
            quality=est.mean if est else None, ci_low=est.low if est else None, ci_high=est.high if est else None,
            latency_p50_s=percentile(latencies, 50), latency_p95_s=percentile(latencies, 95),
            items_per_s=concurrency * len(latencies) / sum(latencies) if concurrency and latencies and sum(latencies)
            else None,
            prompt_tokens_per_item=sum(r.prompt_tokens or 0 for r in ok) / max(len(ok), 1),
            completion_tokens_per_item=sum(r.completion_tokens or 0 for r in ok) / max(len(ok), 1),
            cost_per_1k_items=1000 * sum(costs) / len(costs) if costs else None, unparsed=unparsed,
        ))  # fmt: skip
    return out


def good_enough(rungs: list[Rung], bar: float, cost: Callable[[Rung], float | None] | None = None) -> Rung | None:
    """The cheapest rung (by `cost`, by default the provider-priced cost per 1k items; then prompt tokens)
    whose quality reaches `bar`."""
    cost = cost or (lambda r: r.cost_per_1k_items)
    passing = [r for r in rungs if r.quality is not None and r.quality >= bar]
    key = lambda r: (cost(r) if cost(r) is not None else 0.0, r.prompt_tokens_per_item)  # noqa: E731
    return min(passing, key=key, default=None)
