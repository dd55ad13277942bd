"""`tunelab agree --items --ratings`: file checks, metrics on the fly (cached), the JSON shape, the HTML."""

import json

import numpy as np
import pytest
import typer
from rouge_score import rouge_scorer
from scipy import stats
from typer.testing import CliRunner

from tunelab.review.commands import register
from tunelab.review.imported import load_items, load_ratings
from tunelab.review.errors import ReviewError

runner = CliRunner()


def cli(*args):
    app = typer.Typer()
    register(app, typer.Typer())
    return runner.invoke(app, [str(a) for a in args])


WORDS = "the cat sat on a mat while my dog ran to the park and back home again".split()


def _write(tmp_path, n_inputs=8, systems=("a", "b", "c", "d")):
    rng = np.random.default_rng(0)
    items, ratings = [], []
    for i in range(n_inputs):
        ref = " ".join(rng.choice(WORDS, 8))
        for k, s in enumerate(systems):
            keep = rng.random(8) < (k + 1) / len(systems)       # later systems copy more of the reference
            out = " ".join(w if c else str(rng.choice(WORDS)) for w, c in zip(ref.split(), keep))
            iid = f"x{i}{s}"
            items.append({"id": iid, "input_id": f"in{i}", "system": s, "output": out,
                          "references": [ref, " ".join(reversed(ref.split()))]})
            for rater in ("r1", "r2"):
                ratings.append({"item_id": iid, "dimension": "quality", "rater": rater,
                                "score": int(np.clip(k + 1 + rng.integers(-1, 2), 1, 5))})
    ip, rp = tmp_path / "items.jsonl", tmp_path / "ratings.jsonl"
    ip.write_text("".join(json.dumps(x) + "\n" for x in items))
    rp.write_text("".join(json.dumps(x) + "\n" for x in ratings))
    return ip, rp, items, ratings


def test_json_report_has_every_level_and_equals_scipy(tmp_path):
    ip, rp, items, ratings = _write(tmp_path)
    r = cli("agree", "--items", ip, "--ratings", rp, "--metric", "rouge_l", "--json", "--bootstrap", "100",
            "--db", tmp_path / "c.db")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    rows = rep["correlations"]
    assert {(x["metric"], x["dimension"], x["level"]) for x in rows} == {
        ("rouge_l", "quality", lvl) for lvl in ("item", "input", "system")}
    for x in rows:
        assert set(x) >= {"metric", "dimension", "level", "n", "pearson", "spearman", "kendall", "ci",
                          "skipped_inputs", "verdict"}
    assert rep["metrics"]["rouge_l"]["multi_reference"] == "mean"
    assert {"pearson", "spearman", "kendall", "item", "input", "system"} <= set(rep["explanations"])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    x = [np.mean([scorer.score(ref, it["output"])["rougeL"].fmeasure for ref in it["references"]]) for it in items]
    h = [np.mean([r["score"] for r in ratings if r["item_id"] == it["id"]]) for it in items]
    item = next(r for r in rows if r["level"] == "item")
    assert item["n"] == len(items)
    assert item["spearman"] == pytest.approx(stats.spearmanr(x, h).statistic, abs=1e-12)
    assert item["kendall"] == pytest.approx(stats.kendalltau(x, h).statistic, abs=1e-12)
    # Cached like eval metrics: the second run computes nothing.
    r2 = cli("agree", "--items", ip, "--ratings", rp, "--metric", "rouge_l", "--json", "--bootstrap", "100",
             "--db", tmp_path / "c.db")
    assert json.loads(r2.output)["metrics"]["rouge_l"] | {"computed": 0} == json.loads(r2.output)["metrics"]["rouge_l"]
    assert json.loads(r2.output)["correlations"] == rows


def test_tables_and_html_explain_every_statistic(tmp_path):
    ip, rp, _, _ = _write(tmp_path)
    html = tmp_path / "v.html"
    r = cli("agree", "--items", ip, "--ratings", rp, "--metric", "rouge_l", "--references", "max", "--level", "item",
            "--level", "system", "--bootstrap", "50", "-o", html, "--db", tmp_path / "c.db")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    for words in ("Pearson r:", "Spearman ρ:", "Kendall τ-b:", "item level:", "system level:", "95% CI:",
                  "human–human ceiling:", "rouge_l (refs: max)"):
        assert words in out
    assert "input level" not in out.split("Pearson r:")[0]     # only the levels asked for
    page = html.read_text()
    assert "Kendall τ-b: over all pairs" in page and "rouge_l (refs: max)" in page


def test_bad_rows_name_file_line_and_field_before_any_metric_runs(tmp_path):
    ip, rp, _, _ = _write(tmp_path, n_inputs=2)
    marker = tmp_path / "ran.txt"
    metric = tmp_path / "m.py"
    metric.write_text(f"def f(output, reference, vars):\n    open({str(marker)!r}, 'w').write('x')\n    return 1.0\n")
    lines = rp.read_text().splitlines()
    lines[2] = json.dumps({"item_id": "nope", "dimension": "quality", "rater": "r1", "score": 3})
    rp.write_text("\n".join(lines) + "\n")
    r = cli("agree", "--items", ip, "--ratings", rp, "--metric", f"python:path={metric}:f", "--db", tmp_path / "c.db")
    assert r.exit_code == 2 and f"{rp}:3: field 'item_id': 'nope' is not an id in the items file" in r.output
    assert not marker.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "input_id": "i", "system": "s", "output": "o"}) + "\n"
                   + json.dumps({"id": "b", "input_id": "i", "output": "o"}) + "\n")
    with pytest.raises(ReviewError, match=r"bad.jsonl:2: field 'system' is missing or empty"):
        load_items(bad)
    bad.write_text(json.dumps({"id": "a", "input_id": "i", "system": "s", "output": "o", "references": "x"}) + "\n")
    with pytest.raises(ReviewError, match=r"bad.jsonl:1: field 'references' must be a JSON list"):
        load_items(bad)
    items = load_items(ip)
    rp.write_text(json.dumps({"item_id": items[0].id, "dimension": "q", "rater": "r", "score": "good"}) + "\n")
    with pytest.raises(ReviewError, match=r"ratings.jsonl:1: field 'score' must be a number, got 'good'"):
        load_ratings(rp, items)


def test_scores_files_still_work_and_constant_metrics_are_named(tmp_path):
    ip, rp, items, _ = _write(tmp_path, n_inputs=6)
    scores = tmp_path / "s.jsonl"
    scores.write_text("".join(json.dumps({"item_id": it["id"], "metric": "flat", "value": 1.0}) + "\n"
                              for it in items))
    r = cli("agree", "--items", ip, "--ratings", rp, "--scores", scores, "--json", "--bootstrap", "50",
            "--db", tmp_path / "c.db")
    assert r.exit_code == 0, r.output
    item = next(x for x in json.loads(r.output)["correlations"] if x["level"] == "item")
    assert item["spearman"] is None
    assert item["verdict"] == "cannot be judged at item level: the metric is constant on these items (every value 1)"


def test_g_eval_and_rubric_judge_side_by_side(tmp_path):
    import math
    import re

    from tunelab.evals.fake_server import FakeOpenAI

    ip, rp, items, _ = _write(tmp_path, n_inputs=5)
    level = {it["output"]: "abcd".index(it["system"]) + 1 for it in items}     # the judge "sees" the system

    def reply(body):
        text = body["messages"][-1]["content"]
        out = next(o for o in level if f"\n\n{o}\n\n" in text or text.rstrip().endswith(o) or f"\n{o}\n" in text)
        k = level[out]
        if body.get("logprobs"):
            top = [{"token": str(s), "logprob": math.log(0.7 if s == k else 0.1), "bytes": None} for s in range(1, 5)]
            return {"content": str(k), "logprobs": {"content": [{"token": str(k), "logprob": math.log(0.7),
                                                                 "bytes": None, "top_logprobs": top}]}}
        assert re.search(r"Score: N", text)
        return f"It reads like level {k}.\nScore: {k}"

    with FakeOpenAI(reply) as srv:
        r = cli("agree", "--items", ip, "--ratings", rp, "--judge-url", srv.base_url, "--judge-model", "m",
                "--json", "--bootstrap", "50", "--level", "item", "--db", tmp_path / "c.db")
        assert r.exit_code == 0, r.output
        calls = srv.calls
        again = cli("agree", "--items", ip, "--ratings", rp, "--judge-url", srv.base_url, "--judge-model", "m",
                    "--json", "--bootstrap", "50", "--level", "item", "--db", tmp_path / "c.db")
        assert again.exit_code == 0 and srv.calls == calls                      # cached like other judges
    rep = json.loads(r.output)
    by = {x["metric"]: x for x in rep["correlations"]}
    assert set(by) == {"geval", "rubric_judge"}
    assert rep["metrics"]["geval"] == {"method": {"quality": "20 × logprobs"}}
    assert by["geval"]["spearman"] > 0.5 and by["rubric_judge"]["spearman"] > 0.5


def test_review_task_from_a_run_gets_the_three_levels(tmp_path):
    from tunelab.evals.store import Store

    db = tmp_path / "tunelab.db"
    variants = ("p1@m", "p2@m", "p3@m")
    with Store(db) as s:
        run_id = s.create_run({}, description="t", config_path=None)
        s.put_items(run_id, [(f"q{i}", i + 1, {"q": i}, None) for i in range(8)])
        outs, scores = [], []
        for i in range(8):
            for k, v in enumerate(variants):
                outs.append(dict(item_id=f"q{i}", variant=v, prompt_id=v[:2], provider_id="m", repeat=0,
                                 rendered_json=json.dumps([{"role": "user", "content": f"question {i}"}]),
                                 output=f"{v} answers {i}", error=None, prompt_tokens=1, completion_tokens=1,
                                 latency_s=0.1, cost=0.0, cached=0))
                scores.append((f"q{i}", v, 0, "rouge_l", k + 0.1 * ((i * 7 + k) % 5)))
        s.put_outputs(run_id, outs)
        s.put_scores(run_id, scores)
    assert cli("review", "create", "t", "--run", run_id, "--dimensions", "quality", "--describe",
               "quality=Is the answer right and clear?", "--db", db).exit_code == 0
    rows = [{"item_id": f"q{i}::{v}", "rater": rater, "dimension": "quality", "score": min(5, k + 1 + (i + j) % 2)}
            for i in range(8) for k, v in enumerate(variants) for j, rater in enumerate(("x", "y"))]
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert cli("review", "import", "t", tmp_path / "h.jsonl", "--db", db).exit_code == 0
    r = cli("agree", "t", "--run", run_id, "--json", "--bootstrap", "50", "--db", db)
    assert r.exit_code == 0, r.output
    levels = json.loads(r.output)["quality"]["levels"]
    assert [(x["metric"], x["level"]) for x in levels] == [("rouge_l", "item"), ("rouge_l", "input"),
                                                           ("rouge_l", "system")]
    assert levels[1]["n"] == 8 and levels[2]["n"] == 3 and levels[0]["human_ceiling"] is not None
    table = cli("agree", "t", "--run", run_id, "--bootstrap", "50", "--db", db)
    assert "automated vs human, item level" in table.output and "system level:" in " ".join(table.output.split())
