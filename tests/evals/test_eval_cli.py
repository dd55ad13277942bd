"""The commands end to end (eval, runs, results, compare, report) and the
statistics they print, checked against scipy."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from tunelab.evals.stats import mean_ci, paired_bootstrap


def _write_config(tmp_path, server, prompt="Capital of {{ country }}?", name="eval.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "description": "capitals <b>bold</b>",
        "dataset": "data.jsonl",
        "prompts": [{"id": "zs", "template": prompt}],
        "providers": [{"id": "small", "type": "openai", "base_url": server.base_url, "model": "m",
                       "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}}],
        "metrics": ["exact_match", "rouge_l"],
        "retry": {"max_retries": 1, "backoff_s": 0.001},
    }))
    return path


def test_eval_runs_results_compare_report(tmp_path, server, dataset, cli):
    db = tmp_path / "t.db"
    r = cli("eval", _write_config(tmp_path, server), "--db", db)
    assert r.exit_code == 0, r.output
    run_a = r.stdout.strip().splitlines()[-1]
    assert "zs@small" in r.output and "exact_match" in r.output

    r = cli("eval", _write_config(tmp_path, server, "Which city is the capital of {{ country }}?", "b.yaml"), "--db", db)
    run_b = r.stdout.strip().splitlines()[-1]

    runs = json.loads(cli("runs", "--db", db, "--format", "json").stdout)
    assert [x["id"] for x in runs] == [run_a, run_b] and runs[0]["n_outputs"] == 4

    lines = cli("results", "latest", "--db", db, "--format", "jsonl").stdout.splitlines()
    rows = [json.loads(x) for x in lines]
    assert len(rows) == 4 and {x["run_id"] for x in rows} == {run_b}
    assert rows[0]["vars"] == {"country": "France", "reference": "Paris"} and rows[0]["scores"]["exact_match"] == 1.0

    table = list(csv.DictReader(io.StringIO(cli("results", run_a, "--db", db, "--format", "csv").stdout)))
    assert len(table) == 4 and table[3]["output"] == "Barcelona" and table[3]["metric:exact_match"] == "0.0"
    assert json.loads(table[0]["vars"])["country"] == "France" and float(table[0]["metric:rouge_l"]) == 1.0

    r = cli("compare", run_a, run_b, "--db", db)
    assert r.exit_code == 0 and "exact_match" in r.output

    out = tmp_path / "report.html"
    assert cli("report", run_a, run_b, "-o", out, "--db", db).exit_code == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 2 and "capitals &lt;b&gt;bold&lt;/b&gt;" in page


def test_report_escapes_model_output(tmp_path, dataset, cli):
    from tunelab.evals.fake_server import FakeOpenAI

    with FakeOpenAI(lambda body: "<script>alert('x')</script>") as srv:
        db = tmp_path / "t.db"
        cli("eval", _write_config(tmp_path, srv), "--db", db)
    out = tmp_path / "r.html"
    cli("report", "latest", "-o", out, "--db", db)
    page = out.read_text()
    # the report's own filter script is the only script element; the model's is text
    assert page.count("<script") == 1 and "alert(" not in page.split("<script>")[1]
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, server, cli):
    (tmp_path / "data.jsonl").write_text('{"country": "France"}\n{"place": "x"}\n')
    r = cli("eval", _write_config(tmp_path, server), "--db", tmp_path / "t.db")
    assert r.exit_code == 2 and "data.jsonl:2:" in r.output and "'country'" in r.output
    assert server.calls == 0
    r = cli("results", "nope", "--db", tmp_path / "t.db")
    assert r.exit_code == 2 and "no run with id 'nope'" in r.output


def test_mean_ci_matches_scipy_t_interval():
    xs = [0.2, 0.9, 0.4, 0.7, 1.0, 0.0, 0.55]
    lo, hi = sps.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
    e = mean_ci(xs)
    assert (e.mean, e.low, e.high) == pytest.approx((np.mean(xs), lo, hi))


def test_paired_bootstrap_matches_scipy_bootstrap():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.2, 200)
    b = a + 0.05 + rng.normal(0, 0.05, 200)
    est, p = paired_bootstrap(list(a), list(b), resamples=20_000)
    ref = sps.bootstrap((b - a,), np.mean, confidence_level=0.95, n_resamples=20_000, method="percentile",
                        random_state=0).confidence_interval
    assert est.mean == pytest.approx(float(np.mean(b - a)))
    assert est.low == pytest.approx(ref.low, abs=2e-3) and est.high == pytest.approx(ref.high, abs=2e-3)
    assert p < 0.001
    _, p_null = paired_bootstrap(list(a), list(a + rng.normal(0, 0.05, 200)))
    assert p_null > 0.01


def test_prompt_lint_runs_first_and_strict_stops_on_errors(tmp_path, server, dataset, cli):
    bad = 'Country: """{{ country }}\nAnswer with the city name only.'   # fence never closed
    config = _write_config(tmp_path, server, bad)
    r = cli("eval", config, "--db", tmp_path / "t.db", "--strict")
    assert r.exit_code == 2 and "error template" in r.output and "--strict" in r.output
    assert server.calls == 0
    r = cli("eval", config, "--db", tmp_path / "t.db")   # without --strict: reported, run goes on
    assert r.exit_code == 0 and "error template" in r.output and server.calls == 4
