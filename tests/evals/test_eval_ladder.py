"""The ladder table: quality, latency, tokens and cost per rung, and the cheapest rung that is good enough."""

import pytest

from tunelab.evals.ladder import good_enough, ladder
from tunelab.evals.store import ResultRow


def _row(variant, i, correct, prompt_tokens, cost, latency=0.1):
    return ResultRow(run_id="r", item_id=str(i), line=i, vars={}, reference="x", variant=variant,
                     prompt_id=variant.split("@")[0], provider_id=variant.split("@")[1], repeat=0, rendered=[],
                     output="x", error=None, prompt_tokens=prompt_tokens, completion_tokens=2, latency_s=latency,
                     cost=cost, scores={"exact_match": float(correct)})  # fmt: skip


def test_ladder_figures_and_verdict():
    rows = []
    for i in range(10):
        rows.append(_row("zero@base", i, i < 5, 80, 1e-5))
        rows.append(_row("few@base", i, i < 9, 260, 3e-5))
        rows.append(_row("zero@lora", i, i < 10, 80, 1.2e-5, latency=0.2))
    rungs = ladder(rows, {"zero-shot": "zero@base", "few-shot": "few@base", "LoRA": "zero@lora"}, "exact_match")
    assert [r.name for r in rungs] == ["zero-shot", "few-shot", "LoRA"]
    assert [r.quality for r in rungs] == [0.5, 0.9, 1.0]
    assert rungs[1].prompt_tokens_per_item == 260 and rungs[1].cost_per_1k_items == pytest.approx(0.03)
    assert rungs[2].latency_p50_s == pytest.approx(0.2)
    # few-shot reaches 0.9 but costs more than the tuned rung, which also clears the bar.
    assert good_enough(rungs, 0.9).name == "LoRA"
    assert good_enough(rungs, 0.5).name == "zero-shot"
    assert good_enough(rungs, 1.01) is None


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="rung 'x': no results for variant 'nope@base'"):
        ladder([_row("zero@base", 0, True, 1, None)], {"x": "nope@base"}, "exact_match")
