"""`tunelab compare`: for each metric and judge, the mean difference B - A over
the items both sides scored, with a paired bootstrap CI; each side's own mean
carries the interval every other table uses (stats.interval).

Two runs: the same variant of each is paired with itself (or, when the runs share
no variant, every variant of A with every variant of B). One run, or two, with
`--a VARIANT --b VARIANT`: exactly that pair, item by item.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.evals.selection import RunNames, value
from tunelab.evals.stats import Estimate, interval, paired_bootstrap
from tunelab.evals.store import ResultRow


@dataclass
class Comparison:
    metric: str
    variant_a: str
    variant_b: str
    mean_a: float
    mean_b: float
    diff: Estimate
    p_value: float
    a: Estimate | None = None     # side A's own mean and interval on the paired items
    b: Estimate | None = None
    missing_a: int = 0            # shared items with no value on side A (failed call, unparsed verdict), left out
    missing_b: int = 0


def compare_rows(rows_a: list[ResultRow], rows_b: list[ResultRow], *, variant_a: str | None = None,
                 variant_b: str | None = None, metrics: list[str] | None = None, names_a: RunNames | None = None,
                 names_b: RunNames | None = None, resamples: int = 10_000) -> list[Comparison]:
    """`metrics` are measure names (metric ids, judge ids or 'judge:ID'); unknown names and
    variants are errors listing what each side has."""
    names_a = names_a or RunNames.of(rows_a, label="run A")
    names_b = names_b or RunNames.of(rows_b, label="run B")
    if variant_a or variant_b:
        pairs = [(names_a.variant(variant_a or variant_b or "", "--a"), names_b.variant(variant_b or variant_a or "", "--b"))]
    else:
        common = [v for v in names_a.variants if v in names_b.variants]
        # Same variants: pair like with like. Different ones (a new model, a new prompt):
        # compare every variant of A with every variant of B on the shared items.
        pairs = [(v, v) for v in common] or [(a, b) for a in names_a.variants for b in names_b.variants]
    wanted = None if metrics is None else [(names_a.measure(m, "--metric"), names_b.measure(m, "--metric"))
                                           for m in metrics]
    out = []
    for va, vb in pairs:
        ia, ib = _index(rows_a, va), _index(rows_b, vb)
        keys = sorted(ia.keys() & ib.keys())
        if wanted is not None:
            measures = [m for m, _ in wanted]
        else:
            measures = sorted({m for k in keys for m in ia[k].scores} & {m for k in keys for m in ib[k].scores}) + \
                sorted({f"judge:{j}" for k in keys for j in ia[k].judges} &
                       {f"judge:{j}" for k in keys for j in ib[k].judges})
        for m in measures:
            pa, pb, missing_a, missing_b = [], [], 0, 0
            for k in keys:
                x, y = value(ia[k], m), value(ib[k], m)
                missing_a += x is None
                missing_b += y is None
                if x is not None and y is not None:
                    pa.append(x)
                    pb.append(y)
            if not pa:
                continue
            diff, p = paired_bootstrap(pa, pb, resamples=resamples)
            out.append(Comparison(m, va, vb, sum(pa) / len(pa), sum(pb) / len(pb), diff, p, interval(pa),
                                  interval(pb), missing_a, missing_b))
    return out


def compare_runs(store, run_a: str, run_b: str, *, resamples: int = 10_000, **kw) -> list[Comparison]:  # type: ignore[no-untyped-def]
    rows_a, rows_b = store.results(run_a), store.results(run_b)
    return compare_rows(rows_a, rows_b, resamples=resamples,
                        names_a=RunNames.of(rows_a, store.run_config(run_a), f"run {store.resolve_run(run_a)}"),
                        names_b=RunNames.of(rows_b, store.run_config(run_b), f"run {store.resolve_run(run_b)}"), **kw)


def _index(rows: list[ResultRow], variant: str) -> dict[tuple[str, int], ResultRow]:
    # Failed outputs stay in: they have no value, and count as missing beside the figures.
    return {(r.item_id, r.repeat): r for r in rows if r.variant == variant}
