"""The results store: schema/migrations, the read API other packages use, and
two processes writing one database at once."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from tunelab.evals.errors import EvalError
from tunelab.evals.store import SCHEMA_VERSION, Store


def _output(item_id: str, variant: str = "p@m", **kw):
    base = dict(item_id=item_id, variant=variant, prompt_id=variant.split("@")[0], provider_id=variant.split("@")[1],
                repeat=0, rendered_json='[{"role": "user", "content": "hi"}]', output="out", error=None,
                prompt_tokens=3, completion_tokens=1, latency_s=0.01, cost=0.0, cached=0)
    base.update(kw)
    return base


def test_schema_versioned_wal_and_results_api(tmp_path):
    db = tmp_path / "r.db"
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        run = store.create_run({"x": 1}, description="d", config_path="c.yaml")
        store.put_items(run, [("a", 1, {"country": "France"}, "Paris")])
        store.put_outputs(run, [_output("a"), _output("a", "q@m", output=None, error="HTTP 500")])
        store.put_scores(run, [("a", "p@m", 0, "exact_match", 1.0)])
        store.put_verdicts(run, [dict(judge_id="pref", kind="pairwise", item_id="a", variant="p@m",
                                      other_variant="q@m", repeat=0, score=None, passed=None, winner="p@m",
                                      reasoning=None, raw='["[[A]]", "[[B]]"]', parse_error=None,
                                      prompt_tokens=10, completion_tokens=2, cost=None)])
        rows = store.results("latest")
    # Independent check through plain sqlite3: WAL is on, version recorded in storage.sqlite's one table, and
    # user_version (where tunelab recorded it before v3) says v3 so an older tunelab refuses the file.
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT component, version FROM tunelab_schema").fetchall() == [("evals", SCHEMA_VERSION)]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert [(r.item_id, r.variant) for r in rows] == [("a", "p@m"), ("a", "q@m")]
    p, q = rows
    assert p.vars == {"country": "France"} and p.reference == "Paris" and p.line == 1
    assert p.scores == {"exact_match": 1.0} and p.rendered[0]["content"] == "hi"
    assert p.judges["pref"]["score"] == 1.0 and q.judges["pref"]["score"] == 0.0
    assert q.error == "HTTP 500" and q.output is None


def test_unknown_run_is_an_actionable_error(tmp_path):
    with Store(tmp_path / "r.db") as store:
        with pytest.raises(EvalError, match="no runs yet"):
            store.resolve_run("latest")
        with pytest.raises(EvalError, match="no run with id 'nope'"):
            store.resolve_run("nope")


def _writer(path: str, tag: str, n: int) -> None:
    store = Store(path)
    for i in range(n):
        run = store.create_run({}, description=tag, config_path=None)
        store.put_items(run, [(f"{tag}{i}", i, {}, None)])
        store.put_outputs(run, [_output(f"{tag}{i}")])
        store.put_scores(run, [(f"{tag}{i}", "p@m", 0, "m", float(i))])
    store.close()


def test_two_concurrent_writers(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, tag, 40)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Store(path) as store:
        runs = store.runs()
        assert len(runs) == 80
        assert all(r.n_outputs == 1 for r in runs)
        assert sum(len(store.results(r.id)) for r in runs) == 80


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    """Switching a new file to WAL fails at once ("database is locked") when another connection does the
    same; the store retries instead of failing. Repeated, because the race is a matter of timing."""
    import threading

    from tunelab.evals.store import Store

    for trial in range(25):
        errors = []

        def open_and_write(path=tmp_path / f"new-{trial}.db"):
            try:
                with Store(path) as store:
                    store.create_run({}, description=None, config_path=None)
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors


def test_v1_database_migrates_and_its_stuck_running_run_reads_interrupted(tmp_path):
    """A database written before v2 keeps its rows; a run left `running` by a killed v1 eval (no owner
    recorded) is shown as interrupted, so it can be resumed or pruned."""
    from tunelab.evals.store import MIGRATIONS
    from tunelab.storage.sqlite import statements as _statements

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO runs (id, created_at, status, config_json) VALUES ('old', 1.0, 'running', '{}')")
    conn.execute("INSERT INTO verdicts (run_id, judge_id, kind, item_id, variant, repeat, parse_error) "
                 "VALUES ('old', 'q', 'rubric', 'a', 'p@m', 0, 'unparseable')")
    conn.commit()
    conn.close()
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        (run,) = store.runs()
        assert (run.id, run.status, run.n_verdicts, run.n_parse_failures) == ("old", "interrupted", 1, 1)
    columns = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(verdicts)")}
    assert {"error", "key"} <= columns


def _old_v2_database(db) -> None:
    """A results file as a tunelab from before tunelab_schema wrote it: v1 + v2 applied, the version in
    PRAGMA user_version, a row in every table."""
    from tunelab.evals.store import MIGRATIONS
    from tunelab.storage.sqlite import statements

    conn = sqlite3.connect(db)
    for script in MIGRATIONS[:2]:
        for statement in statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.executescript("""
        INSERT INTO runs (id, created_at, finished_at, status, config_json, owner) VALUES ('r1', 1.0, 2.0, 'complete',
            '{"k": 1}', 'h:1:1');
        INSERT INTO items VALUES ('r1', 'a', 3, '{"country": "France"}', '"Paris"');
        INSERT INTO outputs VALUES ('r1', 'a', 'p@m', 'p', 'm', 0, '[{"role": "user", "content": "hi"}]', 'Paris',
            NULL, 3, 1, 0.5, 0.0, 0, 1.5);
        INSERT INTO scores VALUES ('r1', 'a', 'p@m', 0, 'exact_match', 1.0);
        INSERT INTO verdicts (run_id, judge_id, kind, item_id, variant, repeat, score, passed, key)
            VALUES ('r1', 'q', 'rubric', 'a', 'p@m', 0, 4.0, 1, 'k1');
        INSERT INTO response_cache VALUES ('rk', 'cached out', 3, 2, 0.1, 'stop', 1.0);
        INSERT INTO result_cache VALUES ('mk', '{"v": 0.5}', 1.0);
    """)
    conn.commit()
    conn.close()


def test_a_v2_database_from_user_version_days_opens_with_its_data(tmp_path):
    """Files from before the shared scheme recorded their version in user_version: they open without re-running
    v1/v2 (which would fail on existing tables), keep every row, record the version in tunelab_schema and share the
    file with the review store. A file from a newer tunelab is refused."""
    from tunelab.review.store import ReviewStore

    db = tmp_path / "old.db"
    _old_v2_database(db)
    for _ in range(2):  # the second open finds the file up to date
        with Store(db) as store:
            assert store.schema_version == SCHEMA_VERSION
            assert [(r.id, r.status, r.n_items, r.n_outputs, r.n_verdicts) for r in store.runs()] == [
                ("r1", "complete", 1, 1, 1)]
            assert store.run_config("r1") == {"k": 1}
            (row,) = store.results("r1")
            assert (row.line, row.vars, row.reference, row.output, row.scores) == (
                3, {"country": "France"}, "Paris", "Paris", {"exact_match": 1.0})
            assert row.judges["q"]["score"] == 4.0 and row.judges["q"]["passed"] is True
            assert store.cache_get_response("rk")["output"] == "cached out"
            assert store.cache_get_results(["mk", "missing"]) == {"mk": {"v": 0.5}}
    ReviewStore(db).close()
    conn = sqlite3.connect(db)
    assert dict(conn.execute("SELECT component, version FROM tunelab_schema").fetchall()) == {
        "evals": SCHEMA_VERSION, "review": 3}
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    # ...and once a newer tunelab has moved it on, this one refuses it rather than guess.
    with conn:
        conn.execute("UPDATE tunelab_schema SET version = 9 WHERE component = 'evals'")
    with pytest.raises(EvalError, match=rf"old\.db: database schema v9 is newer than this tunelab \(v{SCHEMA_VERSION}"):
        Store(db)
