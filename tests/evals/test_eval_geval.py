"""G-Eval judge against a real HTTP OpenAI-compatible fake, through the real `openai` client."""

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
