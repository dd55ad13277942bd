"""The CLI end to end: create -> add-rater -> import/export -> agree, from a file and from an eval run."""

import csv
import io
import json

import typer
from typer.testing import CliRunner

from review_helpers import PAYLOAD, write_items
from tunelab.evals.store import Store
from tunelab.review.commands import register

runner = CliRunner()


def cli():
    app = typer.Typer()
    register(app, typer.Typer())
    return app


def run(*args):
    r = runner.invoke(cli(), [str(a) for a in args])
    return r


def test_create_add_rater_import_export_agree(tmp_path):
    db = tmp_path / "t.db"
    items = write_items(tmp_path / "items.jsonl", n=6)
    r = run("review", "create", "t1", "--from", items, "--dimensions", "correctness", "--raters-per-item", "2",
            "--db", db)
    assert r.exit_code == 0, r.output
    r = run("review", "add-rater", "t1", "alice", "--db", db, "--base-url", "http://h:1")
    assert r.exit_code == 0 and r.output.startswith("http://h:1/signin/")
    ratings = tmp_path / "ratings.csv"
    rows = [("item%d" % i, rater, "correctness", s) for i, (a, b) in enumerate([(1, 1), (2, 3), (3, 3), (4, 4), (5, 4), (2, 2)])
            for rater, s in (("alice", a), ("bob", b))]
    ratings.write_text("item_id,rater,dimension,score,preference,comment,timestamp\n"
                       + "".join(f"{i},{r},{d},{s},,,2024-01-01T00:00:00+00:00\n" for i, r, d, s in rows))
    r = run("review", "import", "t1", ratings, "--db", db)
    assert r.exit_code == 0, r.output
    r = run("review", "export", "t1", "--format", "csv", "--db", db)
    got = list(csv.DictReader(io.StringIO(r.output)))
    assert [(g["item_id"], g["rater"], g["dimension"], int(g["score"])) for g in got] == rows
    assert got[0]["timestamp"] == "2024-01-01T00:00:00+00:00"
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"item_id": f"item{i}", "metric": "<script>m</script>", "value": v}) + "\n"
                              for i, v in enumerate([0.1, 0.5, 0.4, 0.8, 0.9, 0.3])))
    html = tmp_path / "agreement.html"
    r = run("agree", "t1", "--scores", scores, "--json", "--bootstrap", "50", "-o", html, "--db", db)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["correctness"]["n_raters"] == 2 and "alice|bob" in rep["correctness"]["cohen_kappa"]
    assert "<script>m</script>" in rep["correctness"]["automated"]
    page = html.read_text()
    assert "<script>m</script>" not in page and "&lt;script&gt;m&lt;/script&gt;" in page
    assert "data:image/png;base64," in page
    # The exported file is itself a valid agree input.
    exported = tmp_path / "export.jsonl"
    run("review", "export", "t1", "--format", "jsonl", "-o", exported, "--db", db)
    r2 = run("agree", exported, "--json", "--bootstrap", "50")
    assert json.loads(r2.output)["correctness"]["percent_agreement"] == rep["correctness"]["percent_agreement"]
    r = run("review", "status", "t1", "--db", db)
    assert "alice" in r.output


def test_bad_inputs_name_file_and_line(tmp_path):
    db = tmp_path / "t.db"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "input": "x", "output": "y"}\n{"id": "b", "input": "x"}\n')
    r = run("review", "create", "t", "--from", bad, "--db", db)
    assert r.exit_code == 2 and f"{bad}:2" in r.output and "output" in r.output
    r = run("review", "create", "t", "--from", write_items(tmp_path / "i.jsonl"), "--scale", "1-12", "--db", db)
    assert r.exit_code == 2 and "--scale" in r.output
    run("review", "create", "t", "--from", tmp_path / "i.jsonl", "--db", db)
    ratings = tmp_path / "r.jsonl"
    ratings.write_text('{"item_id": "item0", "rater": "a", "dimension": "overall", "score": 9}\n')
    r = run("review", "import", "t", ratings, "--db", db)
    assert r.exit_code == 2 and "outside the scale" in r.output


def test_review_and_agree_from_an_eval_run(tmp_path):
    db = tmp_path / "tunelab.db"
    with Store(db) as s:
        run_id = s.create_run({}, description="t", config_path=None)
        s.put_items(run_id, [(f"q{i}", i + 1, {"q": i}, None) for i in range(6)])
        outs, scores, verdicts = [], [], []
        for i in range(6):
            for v in ("p1@m", "p2@m"):
                outs.append(dict(item_id=f"q{i}", variant=v, prompt_id=v[:2], provider_id="m", repeat=0,
                                 rendered_json=json.dumps([{"role": "user", "content": f"{v[:2]} question {i}"}]),
                                 output=f"{v} says {i} {PAYLOAD}", error=None, prompt_tokens=1, completion_tokens=1,
                                 latency_s=0.1, cost=0.0, cached=0))
            verdicts.append(dict(judge_id="ab", kind="pairwise", item_id=f"q{i}", variant="p1@m", other_variant="p2@m",
                                 repeat=0, score=None, passed=None, winner=["p1@m", "p2@m", "tie"][i % 3],
                                 reasoning="", raw=None, parse_error=None, prompt_tokens=0, completion_tokens=0,
                                 cost=0.0))
        s.put_outputs(run_id, outs)
        s.put_verdicts(run_id, verdicts)
    r = run("review", "create", "ab", "--run", run_id, "--pairwise", "p1@m", "p2@m", "--db", db)
    assert r.exit_code == 0, r.output
    # Two prompts compared: each response keeps its own rendered input (Found 4).
    from tunelab.review.store import ReviewStore
    it = ReviewStore(db).item("ab", "q0")
    assert (it.input, it.input_b) == ("p1 question 0", "p2 question 0")
    prefs = ["A", "B", "tie", "A", "B", "A"]  # the judge says A, B, tie, A, B, tie
    lines = "".join(json.dumps({"item_id": f"q{i}", "rater": rater, "dimension": "overall", "preference": p}) + "\n"
                    for i, p in enumerate(prefs) for rater in ("x", "y"))
    (tmp_path / "h.jsonl").write_text(lines)
    assert run("review", "import", "ab", tmp_path / "h.jsonl", "--db", db).exit_code == 0
    r = run("agree", "ab", "--run", run_id, "--json", "--bootstrap", "50", "--db", db)
    assert r.exit_code == 0, r.output
    judge = json.loads(r.output)["overall"]["automated"]["ab"]
    assert judge["kind"] == "pairwise" and judge["accuracy"]["value"] == 5 / 6


def test_owner_commands_and_export_with_history(tmp_path):
    from tunelab.review.store import Rating, ReviewStore

    db = tmp_path / "t.db"
    items = write_items(tmp_path / "items.jsonl", n=2)
    guide = tmp_path / "guide.md"
    guide.write_text("# Be kind\n")
    r = run("review", "create", "t", "--from", items, "--dimensions", "tone", "--db", db)
    assert r.exit_code == 2 and "--describe" in r.output
    r = run("review", "create", "t", "--from", items, "--dimensions", "tone", "--describe", "tone=Is it friendly?",
            "--guidelines", guide, "--deadline", "2030-01-01", "--raters-per-item", "1", "--db", db)
    assert r.exit_code == 0, r.output
    task = ReviewStore(db).task("t")
    assert task.guidelines == "# Be kind\n" and task.descriptions == {"tone": "Is it friendly?"}
    assert task.deadline == 1893456000.0
    for who in ("alice", "bob"):
        assert run("review", "add-rater", "t", who, "--db", db, "--expires-days", "2").exit_code == 0
    assert run("review", "admin-link", "--base-url", "http://h:1", "--db", db).output.startswith("http://h:1/admin/signin/")
    store = ReviewStore(db)
    store.submit("t", [Rating("item0", "alice", "tone", 2.0, comment="=HYPERLINK(\"x\")")])
    store.submit("t", [Rating("item0", "alice", "tone", 3.0, comment="@SUM(1)")])
    store.skip("t", "item1", "alice")
    r = run("review", "remove-rater", "t", "bob", "--db", db)
    assert r.exit_code == 0 and "alice 2" in r.output, r.output
    assert run("review", "deadline", "t", "none", "--db", db).exit_code == 0 and ReviewStore(db).task("t").deadline is None
    latest = list(csv.DictReader(io.StringIO(run("review", "export", "t", "--db", db).output)))
    assert [(x["item_id"], x["score"], x["comment"], x["state"]) for x in latest] == [
        ("item0", "3", "'@SUM(1)", "rated"), ("item1", "", "", "skipped")]
    out = tmp_path / "history.csv"
    assert run("review", "export", "t", "--history", "-o", out, "--db", db).exit_code == 0
    hist = list(csv.DictReader(out.open(newline="")))
    assert [(x["score"], x["comment"], x["state"]) for x in hist] == [
        ("2", "'=HYPERLINK(\"x\")", "replaced"), ("3", "'@SUM(1)", "rated"), ("", "", "skipped")]
    # agree reads a full-history export as the latest answers only.
    from tunelab.review import longformat
    assert [(x.item_id, x.score) for x in longformat.load(out)] == [("item0", 3.0)]
    r = run("review", "status", "t", "--db", db)
    assert "bob (removed)" in r.output
