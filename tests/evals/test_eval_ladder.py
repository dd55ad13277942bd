"""The ladder table: quality, latency, tokens and cost per rung, and the cheapest rung that is good enough."""

import pytest

from tunelab.evals.ladder import good_enough, ladder, machine_cost_per_1k
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
    # Pass/fail quality gets a Wilson interval (scipy), which stays inside [0, 1] even at 100%.
    from scipy.stats import binomtest

    ci = binomtest(9, 10).proportion_ci(method="wilson")
    assert (rungs[1].ci_low, rungs[1].ci_high) == pytest.approx((ci.low, ci.high))
    assert rungs[2].ci_high == pytest.approx(1.0) and rungs[2].ci_low < 1.0
    # few-shot reaches 0.9 but costs more than the tuned rung, which also clears the bar.
    assert good_enough(rungs, 0.9).name == "LoRA"
    assert good_enough(rungs, 0.5).name == "zero-shot"
    assert good_enough(rungs, 1.01) is None


def test_ladder_command_on_a_real_run(tmp_path, server, dataset):
    """`tunelab ladder --json` on a run made through the fake OpenAI server equals the ladder computed directly."""
    import json
    import subprocess
    import sys

    from eval_helpers import make_config

    from tunelab.evals.runner import run_eval
    from tunelab.evals.store import Store

    cfg = make_config(tmp_path, server, prompts=[
        {"id": "zero-shot", "template": "Country: {{ country }}"},
        {"id": "vague", "template": "Country code: {{ country[:2] }}"}])  # the fake model answers "I don't know"
    db = tmp_path / "r.db"
    run = run_eval(cfg, db).run_id
    args = [sys.executable, "-m", "tunelab", "ladder", run, "--db", str(db), "--metric", "exact_match",
            "--bar", "0.7", "--rung", "plain=zero-shot@small", "--rung", "vague=vague@small"]  # fmt: skip
    out = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    with Store(db) as store:
        expected = ladder(store.results(run), {"plain": "zero-shot@small", "vague": "vague@small"}, "exact_match")
    assert [r["quality"] for r in got["rungs"]] == [r.quality for r in expected] == [0.75, 0.0]
    assert got["good_enough"] == "plain"
    table = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert "Good enough: plain" in table.stdout
    bad = subprocess.run(args[:-4] + ["--rung", "x=a@b"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--rung x 'a@b': run" in bad.stderr
    assert "has no such variant (it has: vague@small, zero-shot@small)" in bad.stderr
    # an unknown metric is an error naming what the run has, not a "-" and "No rung reaches"
    args_metric = [a if a != "exact_match" else "accuracy" for a in args]
    bad = subprocess.run(args_metric, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--metric 'accuracy'" in bad.stderr
    assert "metrics: exact_match, regex; judges: none" in bad.stderr
    bad = subprocess.run(args[:-4] + ["--rung", "oops"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected NAME=PROMPT@PROVIDER" in bad.stderr


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="rung 'x': no results for variant 'nope@base'"):
        ladder([_row("zero@base", 0, True, 1, None)], {"x": "nope@base"}, "exact_match")


def test_throughput_and_the_two_costs():
    """Little's law: with 4 requests always in flight at 0.5 s each, 8 items/s. At $3.60/h a second costs $0.001,
    so 1,000 items (125 s) cost $0.125; a hosted API charges the same tokens at its list price."""
    from tunelab.evals.ladder import HostedPrice, hosted_cost_per_1k, machine_cost_per_1k

    rows = [_row("zero@base", i, True, 100, None, latency=0.5) for i in range(6)]
    (rung,) = ladder(rows, {"zero-shot": "zero@base"}, "exact_match", concurrency=4)
    assert rung.items_per_s == pytest.approx(8.0)
    assert machine_cost_per_1k(rung, 3.6) == pytest.approx(0.125)
    price = HostedPrice("hosted", input_per_1m=1.0, output_per_1m=4.0, as_of="2024-01-01")
    assert hosted_cost_per_1k(rung, price) == pytest.approx(1000 * (100 * 1.0 + 2 * 4.0) / 1e6)
    (no_rate,) = ladder(rows, {"zero-shot": "zero@base"}, "exact_match")
    assert no_rate.items_per_s is None and machine_cost_per_1k(no_rate, 3.6) is None


def test_latency_percentiles_and_verdict_by_a_given_cost():
    latencies = [0.01 * (i + 1) for i in range(20)]
    rows = [_row("zero@base", i, True, 80, 1e-5, latency=latency) for i, latency in enumerate(latencies)]
    rows += [_row("few@base", i, True, 260, 1e-6, latency=1.0) for i in range(20)]
    rungs = ladder(rows, {"zero-shot": "zero@base", "few-shot": "few@base"}, "exact_match", concurrency=2)
    import numpy as np

    assert rungs[0].latency_p95_s == pytest.approx(float(np.percentile(latencies, 95)))
    assert good_enough(rungs, 0.9).name == "few-shot"  # the provider's price per token says few-shot is cheaper
    # ...but on this machine's time, few-shot's slower requests cost more.
    assert good_enough(rungs, 0.9, cost=lambda r: machine_cost_per_1k(r, 1.0)).name == "zero-shot"
