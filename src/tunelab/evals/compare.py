"""`tunelab compare RUN_A RUN_B`: for each metric and variant, the mean
difference B - A over the items both runs scored, with a paired bootstrap CI."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.evals.stats import Estimate, paired_bootstrap
from tunelab.evals.store import ResultRow, Store


@dataclass
class Comparison:
    metric: str
    variant_a: str
    variant_b: str
    mean_a: float
    mean_b: float
    diff: Estimate
    p_value: float


def compare_runs(store: Store, run_a: str, run_b: str, *, resamples: int = 10_000) -> list[Comparison]:
    rows_a, rows_b = store.results(run_a), store.results(run_b)
    variants_a = sorted({r.variant for r in rows_a})
    variants_b = sorted({r.variant for r in rows_b})
    common = [v for v in variants_a if v in variants_b]
    # Same variants: pair like with like. Different ones (a new model, a new prompt):
    # compare every variant of A with every variant of B on the shared items.
    pairs = [(v, v) for v in common] or [(a, b) for a in variants_a for b in variants_b]
    out = []
    for va, vb in pairs:
        ia, ib = _index(rows_a, va), _index(rows_b, vb)
        keys = sorted(ia.keys() & ib.keys())
        metrics = sorted({m for k in keys for m in ia[k].scores} & {m for k in keys for m in ib[k].scores}) + \
            sorted({f"judge:{j}" for k in keys for j in ia[k].judges} & {f"judge:{j}" for k in keys for j in ib[k].judges})
        for m in metrics:
            pa, pb = [], []
            for k in keys:
                x, y = _value(ia[k], m), _value(ib[k], m)
                if x is not None and y is not None:
                    pa.append(x)
                    pb.append(y)
            if not pa:
                continue
            diff, p = paired_bootstrap(pa, pb, resamples=resamples)
            out.append(Comparison(m, va, vb, sum(pa) / len(pa), sum(pb) / len(pb), diff, p))
    return out


def _index(rows: list[ResultRow], variant: str) -> dict[tuple[str, int], ResultRow]:
    return {(r.item_id, r.repeat): r for r in rows if r.variant == variant and r.error is None}


def _value(r: ResultRow, metric: str) -> float | None:
    if metric.startswith("judge:"):
        v = r.judges.get(metric[6:])
        return None if v is None else v.get("score")
    return r.scores.get(metric)
