"""Durable work: a real SIGKILL in the middle of judging loses only the judge calls in
flight; the dead run shows as `interrupted`, resumes without repeating a stored call, and
`tunelab runs --prune` removes it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import yaml
from eval_helpers import answer

from tunelab.evals.errors import EvalError
from tunelab.evals.fake_server import FakeOpenAI
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store

ANSWERED = 5          # judge replies the server gives before it holds the rest


class HoldingJudge:
    """The fake model, except that judge calls after the first ANSWERED wait until released."""

    def __init__(self) -> None:
        self.judge_calls = 0
        self.held = 0
        self.release = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, body):
        if "[Assistant's answer]" in body["messages"][-1]["content"]:
            with self.lock:
                self.judge_calls += 1
                hold = self.judge_calls > ANSWERED
                self.held += hold
            if hold:
                self.release.wait(60)
        return answer(body)


def _config(tmp_path, base_url):
    rows = [{"id": f"r{i}", "n": i, "country": c, "reference": city}
            for i, (c, city) in enumerate([("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid")] * 4)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": "data.jsonl",
        "prompts": [{"id": "a", "template": "{{ n }}. Capital of {{ country }}?"},
                    {"id": "b", "template": "{{ n }}. Which city is the capital of {{ country }}?"}],
        "providers": [{"id": "m", "base_url": base_url, "model": "fake"}],
        "metrics": ["exact_match"],
        "judges": [{"id": "quality", "type": "rubric", "provider": "m"}],
        "concurrency": 3, "retry": {"max_retries": 0, "timeout_s": 90},
    }))
    return path   # 12 distinct items x 2 prompts = 24 outputs and 24 verdicts


def _count(db, table):
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:   # the eval has not created its tables yet
        return 0
    finally:
        conn.close()


def test_sigkill_mid_judging_loses_only_calls_in_flight(tmp_path):
    judge = HoldingJudge()
    db = tmp_path / "r.db"
    with FakeOpenAI(judge) as server:
        config = _config(tmp_path, server.base_url)
        proc = subprocess.Popen([sys.executable, "-m", "tunelab", "eval", str(config), "--db", str(db)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            # Wait for a known state, not a time: every answered verdict stored and the next calls held.
            while not (_count(db, "verdicts") == ANSWERED and judge.held >= 1):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the eval never reached the held judge calls"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            judge.release.set()
        assert _count(db, "outputs") == 24 and _count(db, "verdicts") == ANSWERED

        with Store(db) as store:
            (run,) = store.runs()
            assert run.status == "interrupted" and run.n_verdicts == ANSWERED
        server.reset()
        stats = run_eval(config, db, resume=run.id)
        # Nothing stored is asked again: no provider call, and judge calls only for the missing verdicts.
        assert stats.provider_calls == 0 and stats.resumed == 24
        assert stats.judge_calls == 24 - ANSWERED == server.calls
        assert stats.verdicts_resumed == {"quality": ANSWERED}
        with Store(db) as store:
            assert store.runs()[0].status == "complete"
            rows = store.results(run.id)
        assert len(rows) == 24 and all(r.judges["quality"]["score"] in (9.0, 2.0) for r in rows)

        server.reset()
        rerun = run_eval(config, db)   # a plain rerun: everything is in the caches
        assert server.calls == 0 and rerun.verdicts_cached == {"quality": 24}


def test_prune_removes_dead_runs_and_keeps_the_rest(tmp_path, server, dataset):
    from eval_helpers import make_config
    from typer.testing import CliRunner

    from tunelab.cli import app

    db = tmp_path / "r.db"
    kept = run_eval(make_config(tmp_path, server), db).run_id
    with Store(db) as store:
        dead = store.create_run({}, description="killed", config_path=None)
        # a run whose owner process has exited (a pid that is not running any more)
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        store.conn.execute("UPDATE runs SET owner = ? WHERE id = ?",
                           (store.conn.execute("SELECT owner FROM runs WHERE id = ?", (dead,)).fetchone()[0]
                            .rsplit(":", 2)[0] + f":{child.pid}:1", dead))
        live = store.create_run({}, description="this process", config_path=None)
        assert {r.id: r.status for r in store.runs()} == {kept: "complete", dead: "interrupted", live: "running"}
        with pytest.raises(EvalError, match="still running"):
            store.claim_run(live, {})
    out = CliRunner().invoke(app, ["runs", "--db", str(db)])
    assert "interrupted" in out.output and "--prune" in out.output
    out = CliRunner().invoke(app, ["runs", "--db", str(db), "--prune"])
    assert out.exit_code == 0 and f"pruned {dead}" in out.output
    with Store(db) as store:
        assert [r.id for r in store.runs()] == [kept, live]
