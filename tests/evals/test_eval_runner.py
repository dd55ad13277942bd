"""End to end against the fake server over real HTTP: caching, recomputation,
failures, resume, and bad rows."""

from __future__ import annotations

import json

import pytest
from eval_helpers import make_config

from tunelab.evals.errors import EvalError
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store


def test_run_scores_and_unchanged_rerun_makes_zero_calls(tmp_path, server, dataset):
    cfg = make_config(tmp_path, server)
    db = tmp_path / "r.db"
    first = run_eval(cfg, db)
    assert server.calls == 4 and first.provider_calls == 4
    with Store(db) as store:
        rows = {r.item_id: r for r in store.results(first.run_id)}
    assert rows["fr"].output == "Paris" and rows["fr"].scores == {"exact_match": 1.0, "regex": 1.0}
    assert rows["sp"].output == "Barcelona" and rows["sp"].scores["exact_match"] == 0.0
    # cost from the server's reported usage and the configured price
    r = rows["fr"]
    assert r.cost == pytest.approx((r.prompt_tokens * 0.15 + r.completion_tokens * 0.60) / 1e6)
    # the request carried the configured params through the openai client
    assert server.requests[0]["max_tokens"] == 16 and server.requests[0]["model"] == "fake-small"

    second = run_eval(cfg, db)
    assert server.calls == 4, "an unchanged rerun must not call the provider"
    assert second.cached_responses == 4 and second.metrics_computed == {"exact_match": 0, "regex": 0}
    with Store(db) as store:
        again = {r.item_id: r for r in store.results(second.run_id)}
    assert {k: (v.output, v.scores) for k, v in again.items()} == {k: (v.output, v.scores) for k, v in rows.items()}

    run_eval(cfg, db, use_cache=False)
    assert server.calls == 8


def test_changed_metric_recomputes_only_itself(tmp_path, server, dataset):
    db = tmp_path / "r.db"
    run_eval(make_config(tmp_path, server), db)
    server.reset()
    changed = make_config(tmp_path, server, metrics=["exact_match", {"name": "regex", "pattern": "^[PB]"}])
    stats = run_eval(changed, db)
    assert server.calls == 0
    assert stats.metrics_computed == {"exact_match": 0, "regex": 4}
    with Store(db) as store:
        scores = {r.item_id: r.scores["regex"] for r in store.results(stats.run_id)}
    assert scores == {"fr": 1.0, "ge": 1.0, "it": 0.0, "sp": 1.0}


def test_custom_python_metric_recomputes_when_its_file_changes(tmp_path, server, dataset):
    metric_file = tmp_path / "my_metric.py"
    metric_file.write_text("def short(output, reference, vars):\n    return len(output) < 6\n")
    cfg = make_config(tmp_path, server, metrics=[{"name": "python", "id": "short", "path": "my_metric.py:short"}])
    db = tmp_path / "r.db"
    first = run_eval(cfg, db)
    assert first.metrics_computed == {"short": 4}
    assert run_eval(cfg, db).metrics_computed == {"short": 0}
    metric_file.write_text("def short(output, reference, vars):\n    return len(output) < 5 and vars['country'] != ''\n")
    third = run_eval(cfg, db)
    assert third.metrics_computed == {"short": 4} and server.calls == 4
    with Store(db) as store:
        assert {r.item_id: r.scores["short"] for r in store.results(third.run_id)} == \
            {"fr": 0.0, "ge": 0.0, "it": 1.0, "sp": 0.0}


def test_retry_then_record_failure_then_resume(tmp_path, server, dataset):
    cfg = make_config(tmp_path, server, concurrency=1)
    db = tmp_path / "r.db"
    # Two failures are absorbed by retries (max_retries=2) ...
    server.fail_queue[:] = [500, 503]
    stats = run_eval(cfg, db)
    assert stats.errors == 0 and server.calls == 6
    server.reset()
    # ... three in a row exhaust one item, which is recorded while the run goes on.
    server.fail_queue[:] = [500, 502, 500]
    failed = run_eval(cfg, db, use_cache=False)
    assert failed.errors == 1 and server.calls == 3 + 3
    with Store(db) as store:
        errs = [r for r in store.results(failed.run_id) if r.error]
        assert len(errs) == 1 and "failed after 3 attempts" in errs[0].error and "500" in errs[0].error
        assert errs[0].scores == {}
        assert store.runs()[-1].status == "complete"
    server.reset()
    resumed = run_eval(cfg, db, use_cache=False, resume=failed.run_id)
    assert server.calls == 1 and resumed.run_id == failed.run_id and resumed.resumed == 3
    with Store(db) as store:
        rows = store.results(failed.run_id)
    assert len(rows) == 4 and all(r.error is None and "exact_match" in r.scores for r in rows)


def test_refused_connection_is_recorded_not_raised(tmp_path, server, dataset):
    cfg = make_config(tmp_path, server)
    cfg.providers[0].base_url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    stats = run_eval(cfg, tmp_path / "r.db")
    assert stats.errors == 4
    with Store(tmp_path / "r.db") as store:
        assert all("APIConnectionError" in r.error for r in store.results("latest"))


def test_missing_variable_names_file_line_variable_and_calls_nothing(tmp_path, server):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"country": "France"}) + "\n\n" + json.dumps({"nation": "Peru"}) + "\n")
    with pytest.raises(EvalError, match=r"data\.jsonl:3: .*no variable 'country'") as err:
        run_eval(make_config(tmp_path, server), tmp_path / "r.db")
    assert server.calls == 0
    # the hint points at the data, not at `tunelab prompt render`'s --var flag
    assert "add 'country' to every dataset row" in str(err.value) and "--var" not in str(err.value)
    (tmp_path / "capital.prompt").write_text("Country: {{ country }}\n")
    with pytest.raises(EvalError, match=r"data\.jsonl:3: .*'country' is undefined") as err:
        run_eval(make_config(tmp_path, server, prompts=[{"id": "f", "file": "capital.prompt"}]), tmp_path / "r.db")
    assert "add 'country' to every dataset row" in str(err.value) and "--var" not in str(err.value)


def test_csv_dataset_and_messages_prompt(tmp_path, server):
    (tmp_path / "data.csv").write_text("id,country,reference\nfr,France,Paris\nit,Italy,Rome\n")
    cfg = make_config(tmp_path, server, dataset="data.csv", prompts=[
        {"id": "chat", "messages": [{"role": "system", "content": "Be polite."},
                                    {"role": "user", "content": "Capital of {{ country }}?"}]}])
    stats = run_eval(cfg, tmp_path / "r.db")
    with Store(tmp_path / "r.db") as store:
        rows = store.results(stats.run_id)
    assert [(r.item_id, r.line, r.output, r.scores["exact_match"]) for r in rows] == \
        [("fr", 2, "Paris.", 1.0), ("it", 3, "Rome.", 1.0)]
    assert rows[0].rendered == [{"role": "system", "content": "Be polite."},
                                {"role": "user", "content": "Capital of France?"}]


def test_bad_config_names_the_field(tmp_path, server):
    with pytest.raises(EvalError, match=r"eval\.yaml: providers\[0\]\.base_url: required"):
        make_config(tmp_path, server, providers=[{"id": "x", "type": "openai", "model": "m"}])
    with pytest.raises(EvalError, match=r"metrics\[1\]\.pattern: invalid regular expression"):
        make_config(tmp_path, server, metrics=["exact_match", {"name": "regex", "pattern": "("}])
    with pytest.raises(EvalError, match=r"judges\[0\]\.provider: 'nope' is not a provider id"):
        make_config(tmp_path, server, judges=[{"id": "j", "type": "rubric", "provider": "nope"}])


def test_python_api_mirrors_yaml(tmp_path, server):
    from tunelab.evals import EvalConfig, MetricConfig, PromptConfig, ProviderConfig, RetryConfig

    cfg = EvalConfig(
        dataset=[{"id": "fr", "country": "France", "reference": "Paris"}],
        prompts=[PromptConfig(id="zs", template="Capital of {{ country }}?")],
        providers=[ProviderConfig(id="small", base_url=server.base_url, model="m")],
        metrics=[MetricConfig("exact_match"), MetricConfig("regex", id="caps", options={"pattern": "^[A-Z]"})],
        retry=RetryConfig(max_retries=0),
    )
    stats = run_eval(cfg, tmp_path / "r.db")
    with Store(tmp_path / "r.db") as store:
        (row,) = store.results(stats.run_id)
    assert row.scores == {"caps": 1.0, "exact_match": 1.0}
    # the YAML form of the same config round-trips to an equal config
    again = EvalConfig.from_dict(cfg.to_dict(), source=cfg.source, base_dir=cfg.base_dir)
    assert again.to_dict() == cfg.to_dict()


def test_two_evals_write_one_database_at_once(tmp_path, server, dataset):
    import threading

    db = tmp_path / "shared.db"
    results, errors = [], []

    def go(prompt: str) -> None:
        try:
            cfg = make_config(tmp_path, server, prompts=[{"id": prompt, "template": prompt + " {{ country }}"}])
            results.append(run_eval(cfg, db))   # each thread opens its own connection
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(p,)) for p in ("capital-of", "city-in", "main-city-of")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 3 and server.calls == 12
    with Store(db) as store:
        assert sorted(r.n_outputs for r in store.runs()) == [4, 4, 4]
        assert all(r.status == "complete" for r in store.runs())
