"""The shipped USR Topical-Chat ratings and G-Eval's Table 2 reproduced on them."""

import json

import numpy as np
import pytest
from scipy import stats

from tunelab.review.published import DATA, PAPER_ROUGE_L, PAPER_TABLE2, human_vector, reproduce_table2


def test_shipped_files_are_complete_and_documented():
    items = [json.loads(x) for x in (DATA / "items.jsonl").read_text().splitlines()]
    ratings = [json.loads(x) for x in (DATA / "ratings.jsonl").read_text().splitlines()]
    assert len(items) == 360 and len({it["input_id"] for it in items}) == 60 and len({it["system"] for it in items}) == 6
    assert len(ratings) == 360 * 6
    humans = ("Original Ground Truth", "New Human Generated")
    for it in items:   # a human response is scored against the other human response, never itself
        assert len(it["references"]) == (1 if it["system"] in humans else 2)
        assert it["system"] not in humans or it["output"] not in it["references"]
    provenance = (DATA / "PROVENANCE.md").read_text()
    assert "CDLA-Sharing-1.0" in provenance and "Mehri" in provenance and "d33e7b6c" in provenance
    assert (DATA / "LICENSE").exists()


def test_rouge_l_row_of_g_eval_table_2_equals_scipy_and_the_paper():
    out = reproduce_table2((PAPER_ROUGE_L,), n_boot=50)
    x = out["vectors"][PAPER_ROUGE_L]
    for row in out["rows"]:
        h = human_vector(out["items"], out["ratings"], row["dimension"])
        assert row["n"] == 300 and not np.isnan(h).any()
        assert row["pearson"] == pytest.approx(stats.pearsonr(x, h).statistic, abs=1e-12)
        assert row["spearman"] == pytest.approx(stats.spearmanr(x, h).statistic, abs=1e-12)
        assert row["kendall"] == pytest.approx(stats.kendalltau(x, h).statistic, abs=1e-12)
        r, rho = PAPER_TABLE2["ROUGE-L"][row["dimension"]]
        # The paper prints three decimals; the same protocol gives the same figures.
        assert row["pearson"] == pytest.approx(r, abs=5e-4) and row["spearman"] == pytest.approx(rho, abs=5e-4)


def test_validation_story_names_the_metric_that_agrees_per_dimension_and_level(tmp_path):
    import io

    from rich.console import Console

    from tunelab.review.published import DIMENSIONS, validation_story

    buf = io.StringIO()
    out = validation_story(Console(file=buf, width=200), db=tmp_path / "c.db", n_boot=200, metrics=["rouge_l", "bleu"])
    text = buf.getvalue()
    rows = out["report"]["correlations"]
    for dim in DIMENSIONS:
        for level in ("item", "input", "system"):
            best = out["best"][(dim, level)]
            line = next(x for x in text.splitlines() if x.split()[:2] == [dim, level])
            agreeing = [r for r in rows if r["dimension"] == dim and r["level"] == level
                        and r["verdict"].startswith("agrees")]
            if best is None:
                assert not agreeing and "no metric agrees reliably" in line
            else:
                top = max(agreeing, key=lambda r: r["spearman"])
                assert top["metric"] == best and f"{best} agrees (ρ {top['spearman']:.2f}" in line
