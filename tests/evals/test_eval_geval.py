"""G-Eval judge against a real HTTP OpenAI-compatible fake, through the real `openai` client."""

import json
import math

import pytest

from tunelab.evals.fake_server import FakeOpenAI
from tunelab.evals.geval import GEvalConfig, geval_messages, methods_used, score_all, score_from_top_logprobs
from tunelab.evals.store import Store

PROBS = {"1": 0.1, "2": 0.2, "3": 0.6, "4": 0.05}   # plus 0.05 on a non-score token


def _with_logprobs(body):
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in PROBS.items()]
    top.append({"token": "The", "logprob": math.log(0.05), "bytes": None})
    return {"content": "3", "logprobs": {"content": [
        {"token": "3", "logprob": math.log(0.6), "bytes": None, "top_logprobs": top}], "refusal": None}}


def _cfg(url):
    return GEvalConfig(id="nat", base_url=url, model="judge", criteria="Naturalness: is it what a person would say?",
                       steps=["Read the input.", "Read the response.", "Rate naturalness from 1 to 5."],
                       n_samples=4)


def test_score_is_the_probability_weighted_sum_over_score_tokens(tmp_path):
    expected = sum(int(s) * p for s, p in PROBS.items()) / sum(PROBS.values())   # 2.684...
    with FakeOpenAI(_with_logprobs) as srv:
        store = Store(tmp_path / "t.db")
        rows = [("How are you?", "Fine, thanks!", None), ("Hi", "Hello there.", ["Hey!"])]
        got = score_all(_cfg(srv.base_url), rows, store)
        assert [v.method for v in got] == ["logprobs", "logprobs"]
        assert got[0].score == pytest.approx(expected)
        assert srv.calls == 2
        again = score_all(_cfg(srv.base_url), rows, store)           # cached: no further calls
        assert srv.calls == 2 and again[1].score == pytest.approx(expected)
        prompt = srv.requests[0]["messages"][0]["content"]
        assert "Evaluation Steps:\n\n1. Read the input." in prompt and prompt.rstrip().endswith("Naturalness (1-5):")


def test_without_logprobs_it_samples_and_says_so():
    # The first (greedy) call asks for logprobs and gets none; then n samples at temperature 1.
    replies = iter(["1", "4", "2", "5", "nonsense", "3", "3", "3"])
    with FakeOpenAI(lambda body: next(replies)) as srv:
        (v,) = score_all(_cfg(srv.base_url), [("q", "a", None)])
        assert srv.requests[0]["logprobs"] is True and srv.requests[1]["temperature"] == 1.0
    assert v.method.startswith("samples (n=4)") and "no logprobs" in v.method
    assert v.samples == [4, 2, 5, 3] and v.score == pytest.approx(3.5)
    assert "1 × samples (n=4)" in methods_used([v])


def test_token_variants_merge_and_out_of_scale_tokens_are_ignored():
    score, probs = score_from_top_logprobs([(" 2", math.log(0.3)), ("2", math.log(0.1)), ("9", math.log(0.5)),
                                            ("1", math.log(0.1))], (1, 5))
    assert probs == pytest.approx({"1": 0.2, "2": 0.8}) and score == pytest.approx(1.8)
    assert score_from_top_logprobs([("yes", 0.0)], (1, 5)) is None
    assert "Reference response(s):\n\n- r1\n- r2" in geval_messages(_cfg("x"), "i", "o", ["r1", "r2"])[0]["content"]


# ---- `judges: - type: geval` in eval YAML ------------------------------------

def _eval_yaml(tmp_path, base_url, **judge):
    import yaml

    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "data.jsonl",
        "prompts": [{"id": "zs", "template": "Capital of {{ country }}?"}, {"id": "other", "template": "{{ country }}"}],
        "providers": [{"id": "m", "base_url": base_url, "model": "m"}],
        "metrics": ["exact_match"],
        "judges": [dict({"id": "nat", "type": "geval", "provider": "m", "rubric": "Correctness: is it the capital?",
                         "steps": ["Read the question.", "Rate the answer from 1 to 5."], "scale": [1, 5],
                         "n_samples": 3, "variants": ["zs@*"]}, **judge)],
        "retry": {"max_retries": 0},
    }))
    return path


def _geval_judge(body, logprobs=True):
    if "Evaluation Form" not in body["messages"][-1]["content"]:
        return "Paris"
    return _with_logprobs(body) if logprobs else "4"


def test_geval_judge_from_eval_yaml_scores_caches_and_shows_in_results(tmp_path, dataset, cli):
    expected = sum(int(s) * p for s, p in PROBS.items()) / sum(PROBS.values())
    db = tmp_path / "r.db"
    with FakeOpenAI(_geval_judge) as srv:
        r = cli("eval", _eval_yaml(tmp_path, srv.base_url), "--db", db)
        assert r.exit_code == 0, r.output
        judged = [b for b in srv.requests if "Evaluation Form" in b["messages"][-1]["content"]]
        assert len(judged) == 4 and all(b["top_logprobs"] == 20 and b["max_tokens"] == 5 for b in judged)
        assert "response_format" not in judged[0]   # G-Eval reads token probabilities, never a schema
        assert "nat: 4 new" in r.output and "G-Eval: 4 by logprobs" in r.output
        run = r.stdout.strip().splitlines()[-1]
        calls = srv.calls
        again = cli("eval", _eval_yaml(tmp_path, srv.base_url), "--db", db)   # a new run: verdicts from the cache
        assert again.exit_code == 0 and "nat: 0 new, 4 cached" in again.output
        assert srv.calls == calls   # eval outputs come from the response cache, verdicts from the result cache
    with Store(db) as store:
        got = [(r.variant, r.judges.get("nat")) for r in store.results(run)]
    assert {v for v, j in got if j} == {"zs@m"}   # variants: ["zs@*"] left `other` unjudged
    scores = [j["score"] for v, j in got if j]
    assert scores == pytest.approx([expected] * 4)
    assert all(j["reasoning"].startswith("logprobs: p(1)=") for v, j in got if j)
    assert "judge nat" in r.output and f"{expected:.3g}" in r.output   # the eval's table, like a rubric judge
    shown = cli("results", run, "--db", db, "--metric", "judge:nat")
    assert shown.exit_code == 0
    listed = [json.loads(line)["judges"]["nat"]["score"] for line in shown.output.splitlines()
              if '"nat"' in line]
    assert listed == pytest.approx([expected] * 4)
    out = tmp_path / "r.html"
    assert cli("report", run, "-o", out, "--db", db).exit_code == 0 and "nat" in out.read_text()


def test_geval_judge_without_logprobs_samples_and_the_run_says_so(tmp_path, dataset, cli):
    with FakeOpenAI(lambda body: _geval_judge(body, logprobs=False)) as srv:
        r = cli("eval", _eval_yaml(tmp_path, srv.base_url), "--db", tmp_path / "r.db")
        sampled = [b for b in srv.requests if b.get("temperature") == 1.0]
    assert r.exit_code == 0, r.output
    assert len(sampled) == 4 * 3   # n_samples calls per output, one choice each
    text = " ".join(r.output.split())
    assert "4 of 4 G-Eval scores are means of sampled answers: the provider returned no logprobs" in text
    assert "G-Eval: 4 by samples (n=3)" in text


def test_geval_judge_needs_its_steps(tmp_path, dataset, cli):
    r = cli("eval", _eval_yaml(tmp_path, "http://127.0.0.1:9/v1", steps=None), "--db", tmp_path / "r.db")
    assert r.exit_code != 0 and "judges[0].steps" in r.output
