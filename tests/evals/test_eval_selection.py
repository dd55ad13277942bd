"""Selection and names: `variants:` and judges' `variants:` globs, prompt params reaching
the call (merged in the documented order, stored, in the cache key), compare within a
run, and unknown names as errors that list what the run has."""

from __future__ import annotations

import json

import pytest
import yaml
from eval_helpers import make_config

from tunelab.evals.errors import EvalError
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store


def _two_by_two(tmp_path, server, **overrides):
    provider = {"type": "openai", "base_url": server.base_url, "model": "m", "params": {"max_tokens": 16}}
    return make_config(tmp_path, server, prompts=[
        {"id": "zero-shot", "template": "Country: {{ country }}"},
        {"id": "few-shot", "template": "France: Paris\nCountry: {{ country }}"}],
        providers=[dict(provider, id="base"), dict(provider, id="lora", model="m-lora")], **overrides)


def test_variants_and_judge_variants_select_by_glob(tmp_path, server, dataset):
    cfg = _two_by_two(tmp_path, server, variants=["*@base", "zero-shot@lora"],
                      judges=[{"id": "q", "type": "rubric", "provider": "base", "variants": ["*@lora"]}])
    stats = run_eval(cfg, tmp_path / "r.db")
    assert stats.provider_calls == 3 * 4 and stats.judge_calls == 4   # 3 variants; the judge sees 1 of them
    with Store(tmp_path / "r.db") as store:
        rows = store.results(stats.run_id)
    assert sorted({r.variant for r in rows}) == ["few-shot@base", "zero-shot@base", "zero-shot@lora"]
    assert {r.variant for r in rows if r.judges} == {"zero-shot@lora"}
    with pytest.raises(EvalError, match=r"variants: '\*@big' matches no variant \(the variants are: zero-shot@base"):
        _two_by_two(tmp_path, server, variants=["*@big"])
    with pytest.raises(EvalError, match=r"judges\[0\]\.variants: 'few-shot@lora' matches no variant"):
        _two_by_two(tmp_path, server, variants=["*@base", "zero-shot@lora"],
                    judges=[{"id": "q", "type": "rubric", "provider": "base", "variants": ["few-shot@lora"]}])


def test_prompt_file_params_apply_in_order_are_stored_and_keyed(tmp_path, server, dataset):
    (tmp_path / "capital.prompt").write_text(
        "---\nparams:\n  temperature: 0.3\n  max_tokens: 8\n  stop: [\"\\n\"]\n---\nCountry: {{ country }}\n")
    provider = {"id": "small", "type": "openai", "base_url": server.base_url, "model": "m",
                "params": {"temperature": 0, "max_tokens": 16, "top_p": 0.9}}
    cfg = make_config(tmp_path, server, providers=[provider],
                      prompts=[{"id": "file", "file": "capital.prompt", "params": {"max_tokens": 4}}])
    db = tmp_path / "r.db"
    stats = run_eval(cfg, db)
    # provider < prompt file < the config's prompt entry
    expected = {"temperature": 0.3, "max_tokens": 4, "top_p": 0.9, "stop": ["\n"]}
    sent = server.requests[0]
    assert {k: sent[k] for k in expected} == expected
    with Store(db) as store:
        assert store.run_config(stats.run_id)["effective_params"] == {"file@small": expected}
    # the params are part of the cache key: changing the prompt's params calls again
    server.reset()
    run_eval(cfg, db)
    assert server.calls == 0
    (tmp_path / "capital.prompt").write_text("---\nparams:\n  stop: [\".\"]\n---\nCountry: {{ country }}\n")
    run_eval(cfg, db)
    assert server.calls == 4 and server.requests[0]["stop"] == ["."]


def test_compare_two_variants_of_one_run(tmp_path, server, dataset, cli):
    cfg = yaml.safe_dump(_two_by_two(tmp_path, server).to_dict())
    (tmp_path / "eval.yaml").write_text(cfg)
    db = tmp_path / "r.db"
    run = cli("eval", tmp_path / "eval.yaml", "--db", db).stdout.strip().splitlines()[-1]
    r = cli("compare", run, "--a", "zero-shot@base", "--b", "few-shot@lora", "--metric", "exact_match", "--db", db)
    assert r.exit_code == 0, r.output
    assert "few-shot@lora minus zero-shot@base" in r.output and "exact_match" in r.output
    r = cli("compare", run, "--db", db)
    assert r.exit_code == 2 and "--a chat-zero@base --b chat-zero@lora" in r.output


@pytest.mark.parametrize("command", [
    ["results", "{run}", "--metric", "accuracy"],
    ["report", "{run}", "--metric", "accuracy", "-o", "{tmp}/r.html"],
    ["compare", "{run}", "--a", "zero-shot@small", "--b", "zero-shot@small", "--metric", "accuracy"],
])
def test_unknown_metric_lists_the_runs_metrics_and_judges(tmp_path, server, dataset, cli, command):
    cfg = make_config(tmp_path, server, judges=[{"id": "quality", "type": "rubric", "provider": "small"}])
    db = tmp_path / "r.db"
    run = run_eval(cfg, db).run_id
    r = cli(*[a.format(run=run, tmp=tmp_path) for a in command], "--db", db)
    assert r.exit_code == 2
    assert "'accuracy'" in r.output and "(metrics: exact_match, regex; judges: quality)" in r.output


def test_unknown_variant_is_an_error_listing_the_variants(tmp_path, server, dataset, cli):
    db = tmp_path / "r.db"
    run = run_eval(make_config(tmp_path, server), db).run_id
    r = cli("results", run, "--variant", "*@lora", "--db", db)
    assert r.exit_code == 2 and "'*@lora' matches no variant (the variants are: zero-shot@small)" in r.output
    r = cli("compare", run, "--a", "zero-shot@small", "--b", "few-shot@small", "--db", db)
    assert r.exit_code == 2 and "--b 'few-shot@small'" in r.output and "(it has: zero-shot@small)" in r.output
    rows = [json.loads(x) for x in cli("results", run, "--variant", "zero*", "--metric", "regex", "--db", db)
            .stdout.splitlines()]
    assert len(rows) == 4 and all(set(x["scores"]) == {"regex"} for x in rows)
