"""One interval rule everywhere: Wilson for 0/1 values, the bootstrap otherwise, checked
against scipy, and the same numbers in the eval table, the report, the ladder and compare."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import make_config
from scipy import stats as sps

from tunelab.evals.compare import compare_rows
from tunelab.evals.ladder import ladder
from tunelab.evals.runner import run_eval
from tunelab.evals.stats import interval
from tunelab.evals.store import Store
from tunelab.evals.summary import summarize


def test_interval_is_wilson_for_pass_fail_and_t_otherwise():
    passes = [1.0] * 3 + [0.0] * 13
    ci = sps.binomtest(3, 16).proportion_ci(confidence_level=0.95, method="wilson")
    e = interval(passes)
    assert e.method == "wilson" and (e.mean, e.low, e.high) == pytest.approx((3 / 16, ci.low, ci.high))
    assert e.low > 0   # a t-interval here would be [-0.027, 0.40]
    allpass = interval([1.0] * 16)
    assert allpass.high == pytest.approx(1.0) and allpass.low < 1.0   # t would collapse to [1, 1]
    # Continuous: the percentile bootstrap of the mean, as scipy computes it, inside the values' range.
    xs = [0.2, 1.0, 1.0, 0.95, 1.0, 1.0, 0.9, 1.0]
    ref = sps.bootstrap((np.asarray(xs),), np.mean, confidence_level=0.95, n_resamples=20_000,
                        method="percentile", random_state=0).confidence_interval
    b = interval(xs)
    assert b.method == "bootstrap" and (b.low, b.high) == pytest.approx((ref.low, ref.high), abs=0.01)
    lo, hi = sps.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
    assert hi > 1.0 >= b.high   # where the t-interval would leave [0, 1]
    assert interval([None, None]) is None


def test_table_ladder_and_compare_use_the_same_interval(tmp_path, server, dataset):
    cfg = make_config(tmp_path, server, prompts=[
        {"id": "plain", "template": "Country: {{ country }}"},
        {"id": "vague", "template": "Country code: {{ country[:2] }}"}])
    db = tmp_path / "r.db"
    run = run_eval(cfg, db).run_id
    with Store(db) as store:
        rows = store.results(run)
    wilson = sps.binomtest(3, 4).proportion_ci(method="wilson")          # plain: 3 of 4 capitals right
    table = {s.variant: s for s in summarize(rows)}["plain@small"].metrics["exact_match"].estimate
    (rung,) = ladder(rows, {"p": "plain@small"}, "exact_match")
    (cmp,) = compare_rows(rows, rows, variant_a="plain@small", variant_b="vague@small", metrics=["exact_match"])
    for low, high in [(table.low, table.high), (rung.ci_low, rung.ci_high), (cmp.a.low, cmp.a.high)]:
        assert (low, high) == pytest.approx((wilson.low, wilson.high))


def test_compare_counts_what_each_side_is_missing():
    from tunelab.evals.store import ResultRow

    def row(variant, i, score, error=None):
        verdict = {"kind": "rubric", "score": score, "parse_error": None if score is not None else "unparseable"}
        return ResultRow(run_id="r", item_id=str(i), line=i, vars={}, reference=None, variant=variant,
                         prompt_id=variant.split("@")[0], provider_id="p", repeat=0, rendered=[], output="x",
                         error=error, prompt_tokens=1, completion_tokens=1, latency_s=0.1, cost=None,
                         judges={} if error else {"q": verdict})

    rows = [row("a@p", i, [7.0, None, 5.0, 6.0][i]) for i in range(4)] + \
        [row("b@p", i, 8.0, error="HTTP 500" if i == 3 else None) for i in range(4)]
    (c,) = compare_rows(rows, rows, variant_a="a@p", variant_b="b@p")
    assert (c.diff.n, c.missing_a, c.missing_b) == (2, 1, 1)
    assert c.diff.mean == pytest.approx(((8 - 7) + (8 - 5)) / 2)
