"""Visible failures: parse failures and errors counted beside every figure, a judge over
its parse-failure threshold flagged in the CLI, the report and the ladder; structured
output asked for when the provider supports it, with the plain-text parse as fallback;
progress lines when stderr is not a terminal."""

from __future__ import annotations

import pytest
import yaml
from eval_helpers import answer

from tunelab.evals.fake_server import FakeOpenAI
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store


def _is_judge(body):
    return "[Assistant's answer]" in body["messages"][-1]["content"] or "could not be read" in \
        body["messages"][-1]["content"]


def mumbling_judge(body):
    """A small judge model: answers the eval fine, never gives a score it can be held to."""
    return "The answer seems fine to me overall." if _is_judge(body) else answer(body)


def _config(tmp_path, base_url, judge=None, provider=None):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "data.jsonl",
        "prompts": [{"id": "zs", "template": "Capital of {{ country }}?"}],
        "providers": [dict({"id": "m", "base_url": base_url, "model": "m"}, **(provider or {}))],
        "metrics": ["exact_match"],
        "judges": [dict({"id": "quality", "type": "rubric", "provider": "m"}, **(judge or {}))],
        "retry": {"max_retries": 0},
    }))
    return path


def test_unparseable_judge_is_counted_and_flagged_everywhere(tmp_path, dataset, cli):
    db = tmp_path / "r.db"
    with FakeOpenAI(mumbling_judge) as srv:
        r = cli("eval", _config(tmp_path, srv.base_url), "--db", db)
    assert r.exit_code == 0, r.output
    run = r.stdout.strip().splitlines()[-1]
    assert "no value · 4 unparsed" in r.output
    assert "WARNING:" in r.output and "judge 'quality': 4 of 4 replies could not be parsed (100%, above 20%)" in \
        r.output.replace("\n", " ")
    with Store(db) as store:
        (info,) = store.runs()
        assert (info.n_verdicts, info.n_parse_failures) == (4, 4)
        raw = store.results(run)[0].judges["quality"]["raw"]
    assert len(raw) == 2   # the reply and the one format follow-up, both kept

    out = tmp_path / "r.html"
    assert cli("report", run, "-o", out, "--db", db).exit_code == 0
    page = out.read_text()
    assert 'class="alarm"' in page and "4 of 4 replies could not be parsed" in page
    assert "no value · 4 unparsed" in page and "every judge reply was unparseable" in page

    r = cli("ladder", run, "--db", db, "--metric", "quality", "--bar", "7", "--rung", "only=zs@m")
    assert r.exit_code == 0 and "WARNING:" in r.output and "No verdict" in r.output
    assert "more data, more steps" not in r.output


def test_threshold_is_configurable(tmp_path, dataset, cli):
    with FakeOpenAI(mumbling_judge) as srv:
        r = cli("eval", _config(tmp_path, srv.base_url, judge={"max_parse_failure_rate": 1.0}), "--db",
                tmp_path / "r.db")
    assert r.exit_code == 0 and "4 unparsed" in r.output and "WARNING" not in r.output


def test_structured_output_is_asked_for_and_falls_back_when_refused(tmp_path, dataset):
    def refuses_response_format(body):
        if body.get("response_format"):
            return 400, "response_format is not supported by this server"
        return answer(body)

    with FakeOpenAI(refuses_response_format) as srv:
        stats = run_eval(_config(tmp_path, srv.base_url), tmp_path / "r.db")
        judge_requests = [b for b in srv.requests if _is_judge(b)]
    # the first judge call asked for JSON, was refused, and every verdict then came from plain text
    assert judge_requests[0].get("response_format") and not judge_requests[-1].get("response_format")
    with Store(tmp_path / "r.db") as store:
        rows = store.results(stats.run_id)
    assert {r.item_id: r.judges["quality"]["score"] for r in rows} == {"fr": 9.0, "ge": 2.0, "it": 2.0, "sp": 2.0}

    with FakeOpenAI(answer) as srv:
        stats = run_eval(_config(tmp_path, srv.base_url, provider={"structured_output": False}), tmp_path / "s.db")
        assert not any(b.get("response_format") for b in srv.requests)
    assert stats.structured_judges == {"quality": False}


def test_tunelab_provider_asks_for_structured_output_unless_told_not_to():
    """The engine constrains decoding to a JSON schema, so the in-process provider takes response_format
    (as the engine's json_schema) unless the config says `structured_output: false`."""
    from tunelab.engine import SamplingParams
    from tunelab.evals import providers
    from tunelab.evals.config import ProviderConfig

    assert providers.TunelabProvider(ProviderConfig(id="t", type="tunelab", model="x")).structured_output is True
    off = ProviderConfig(id="t", type="tunelab", model="x", structured_output=False)
    assert providers.TunelabProvider(off).structured_output is False
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}}}
    got = providers._engine_params({"max_tokens": 5, "response_format": fmt, "bogus": 1}, ("max_tokens",))
    assert got == {"max_tokens": 5, "json_schema": {"type": "object"}}
    assert SamplingParams(**got).constrained
    lp = providers._engine_params({"logprobs": True, "top_logprobs": 7}, ())
    assert lp == {"logprobs": 7} and SamplingParams(**lp).logprobs == 7


def test_progress_lines_without_a_terminal(tmp_path, dataset, cli):
    with FakeOpenAI(answer) as srv:
        r = cli("eval", _config(tmp_path, srv.base_url), "--db", tmp_path / "r.db", "--progress-every", "0")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert any(x.startswith("outputs: 4/4 (100%)") for x in lines)
    assert any(x.startswith("judges: 4/4 (100%)") for x in lines)
    assert sum(x.startswith("outputs: 4/4") for x in lines) == 1   # the completion line once per phase


def test_line_progress_is_periodic():
    from tunelab.evals.commands import LineProgress

    now = [0.0]
    lines: list[str] = []
    p = LineProgress(10.0, lines.append)
    p.clock = lambda: now[0]
    p("outputs", 0, 100)
    p.started = p.last = 0.0
    for done in range(1, 101):
        now[0] = done * 0.5         # one output every half second
        p("outputs", done, 100)
    assert lines == [f"outputs: {d}/100 ({d}%), {d // 2} s, about {(100 - d) // 2} s left" for d in (20, 40, 60, 80)] \
        + ["outputs: 100/100 (100%), 50 s"]


def test_a_json_schema_param_reaches_an_openai_endpoint_as_response_format(tmp_path, dataset):
    """`params: {json_schema: ...}` (the server helper's eval param) and judges' structured output share one path."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    with FakeOpenAI(lambda body: '{"city": "Paris"}') as srv:
        stats = run_eval(_config(tmp_path, srv.base_url, provider={"params": {"json_schema": schema}}),
                         tmp_path / "r.db")
        sent = [b for b in srv.requests if not _is_judge(b)]
    assert stats.errors == 0 and len(sent) == 4
    assert all(b["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema,
                                                                               "strict": True}} for b in sent)
