"""Judge reply parsing, the position-swap rule, retries on unparseable replies,
and judges wired into a run against the fake server."""

from __future__ import annotations

import asyncio

import pytest
from eval_helpers import make_config

from tunelab.evals.config import JudgeConfig
from tunelab.evals.judges import (ParseError, combine_orders, judge_pairwise, judge_rubric, parse_pairwise,
                                  parse_rubric)
from tunelab.evals.providers import Completion
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store


def test_parse_rubric_formats():
    assert parse_rubric("Clear and right.\nScore: 8", (1, 10)) == (8.0, "Clear and right.")
    assert parse_rubric('{"reasoning": "fine", "score": 6}', (1, 10)) == (6.0, "fine")
    assert parse_rubric("```json\n{\"reasoning\": \"ok\", \"score\": 4}\n```", (1, 5))[0] == 4.0
    assert parse_rubric("Rating: [[7]]", (1, 10))[0] == 7.0
    # the rubric may quote a score; the last one is the verdict
    assert parse_rubric("A score: 10 answer would cite sources. This one does not.\nScore: 3", (1, 10))[0] == 3.0
    with pytest.raises(ParseError, match="outside the scale"):
        parse_rubric("Score: 11", (1, 10))
    with pytest.raises(ParseError, match="no score"):
        parse_rubric("I think it's good", (1, 10))


def test_parse_pairwise_formats():
    assert parse_pairwise("A is more accurate. [[A]]") == "A"
    assert parse_pairwise("[[B]]") == "B"
    assert parse_pairwise("Equal. [[C]]") == "tie"
    assert parse_pairwise('{"winner": "tie"}') == "tie"
    with pytest.raises(ParseError):
        parse_pairwise("They are both fine.")


@pytest.mark.parametrize("first,swapped,expected", [
    ("A", "B", "A"),      # x first then x second: both orders pick x
    ("B", "A", "B"),      # y both times
    ("A", "A", "tie"),    # always the first position: position bias, not a preference
    ("B", "B", "tie"),
    ("A", "tie", "tie"),
    ("tie", "tie", "tie"),
])
def test_position_swap_rule(first, swapped, expected):
    assert combine_orders(first, swapped) == expected


def _scripted(replies):
    calls = []

    async def call(messages):
        calls.append(messages)
        return Completion(replies[len(calls) - 1], 10, 2, 0.0)
    return call, calls


def test_unparseable_reply_retried_once_then_recorded():
    cfg = JudgeConfig(id="q", type="rubric", provider="p", threshold=7)
    call, calls = _scripted(["Looks good to me", "Score: 8"])
    v = asyncio.run(judge_rubric(cfg, call, "Q?", "A", None))
    assert v.score == 8.0 and v.passed is True and len(calls) == 2 and v.prompt_tokens == 20
    assert calls[1][-1]["role"] == "user" and "Score: N" in calls[1][-1]["content"]
    call, calls = _scripted(["no idea", "still no idea"])
    v = asyncio.run(judge_rubric(cfg, call, "Q?", "A", None))
    assert v.score is None and v.parse_error and v.raw == ["no idea", "still no idea"] and len(calls) == 2


def test_pairwise_judge_asks_both_orders():
    cfg = JudgeConfig(id="p", type="pairwise", provider="p", compare=["a", "b"])
    call, calls = _scripted(["[[A]]", "[[A]]"])     # position-biased judge
    v = asyncio.run(judge_pairwise(cfg, call, "Q?", "answer x", "answer y", None))
    assert v.winner == "tie" and len(calls) == 2
    first, second = (c[-1]["content"] for c in calls)
    assert first.index("answer x") < first.index("answer y") and second.index("answer y") < second.index("answer x")
    call, _ = _scripted(["[[B]]", "[[A]]"])          # consistent: y wins in both orders
    assert asyncio.run(judge_pairwise(cfg, call, "Q?", "x", "y", None)).winner == "B"


def test_judges_in_a_run(tmp_path, server, dataset):
    cfg = make_config(tmp_path, server, prompts=[
        {"id": "zero-shot", "template": "Capital of {{ country }}?"},
        {"id": "vague", "template": "Say something about {{ country | length }} letters"}],
        judges=[{"id": "quality", "type": "rubric", "provider": "small", "threshold": 7},
                {"id": "pref", "type": "pairwise", "provider": "small", "compare": ["zero-shot", "vague"]}])
    db = tmp_path / "r.db"
    stats = run_eval(cfg, db)
    # 8 outputs + 8 rubric verdicts + 4 pairs x 2 orders
    assert stats.provider_calls == 8 and stats.judge_calls == 8 + 8 and server.calls == 24
    with Store(db) as store:
        rows = {(r.item_id, r.prompt_id): r for r in store.results(stats.run_id)}
    fr = rows[("fr", "zero-shot")]
    assert fr.judges["quality"]["score"] == 9.0 and fr.judges["quality"]["passed"] is True
    assert rows[("sp", "zero-shot")].judges["quality"]["passed"] is False
    assert fr.judges["pref"]["winner"] == "zero-shot@small" and fr.judges["pref"]["score"] == 1.0
    assert rows[("fr", "vague")].judges["pref"]["score"] == 0.0
    assert rows[("sp", "zero-shot")].judges["pref"]["winner"] == "tie"   # Barcelona: neither correct
    # reference-guided: the rubric prompt carried the row's reference
    rubric_requests = [r for r in server.requests if "[Assistant's answer]" in r["messages"][-1]["content"]]
    # an OpenAI-compatible judge is asked for structured output: a JSON schema its reply validates against
    import jsonschema

    schema = rubric_requests[0]["response_format"]["json_schema"]["schema"]
    jsonschema.validate({"reasoning": "x", "score": 9}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"reasoning": "x", "score": 11}, schema)
    assert list(schema["properties"]) == ["reasoning", "score"]   # reasoning is written before the score
    assert any("[Reference answer]\nParis" in r["messages"][-1]["content"] for r in rubric_requests)
    assert fr.judges["quality"]["prompt_tokens"] > 0
    server.reset()
    rerun = run_eval(cfg, db)
    assert server.calls == 0 and rerun.verdicts_cached == {"quality": 8, "pref": 4}
