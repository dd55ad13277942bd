"""The results store: one SQLite file holding runs, items, outputs, scores and
judge verdicts, plus the response/result caches.

The schema lives in `MIGRATIONS` and nowhere else; `docs/evaluation.md` documents
it table by table so other packages (review, reports) can read it directly.

Concurrency: WAL mode lets readers proceed while one writer commits, and every
write is one short `BEGIN IMMEDIATE` transaction with a generous busy_timeout,
so two `tunelab eval` processes sharing a database simply take turns.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tunelab.evals.errors import EvalError
from tunelab.evals.liveness import owner_alive, this_process
from tunelab.storage.sqlite import connect, immediate, migrate, schema_version, table_exists

# The "evals" component of storage.sqlite's versioning: each entry upgrades the schema
# by one version. Never edit an entry once released: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # v1
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL,            -- running | complete | failed (interrupted: running, owner dead)
        description TEXT,
        config_path TEXT,
        config_json TEXT NOT NULL        -- the EvalConfig as JSON
    );
    CREATE TABLE items (
        run_id TEXT NOT NULL REFERENCES runs(id),
        item_id TEXT NOT NULL,
        line INTEGER,                     -- line in the dataset file (1-based)
        vars_json TEXT NOT NULL,          -- template variables
        reference_json TEXT,              -- JSON of the row's `reference`, or NULL
        PRIMARY KEY (run_id, item_id)
    );
    CREATE TABLE outputs (
        run_id TEXT NOT NULL REFERENCES runs(id),
        item_id TEXT NOT NULL,
        variant TEXT NOT NULL,            -- "<prompt_id>@<provider_id>"
        prompt_id TEXT NOT NULL,
        provider_id TEXT NOT NULL,
        repeat INTEGER NOT NULL,
        rendered_json TEXT NOT NULL,      -- chat messages sent: [{role, content}]
        output TEXT,                      -- NULL when the call failed
        error TEXT,                       -- error text when the call failed
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_s REAL,
        cost REAL,
        cached INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, item_id, variant, repeat)
    );
    CREATE TABLE scores (
        run_id TEXT NOT NULL REFERENCES runs(id),
        item_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        repeat INTEGER NOT NULL,
        metric TEXT NOT NULL,             -- metric id
        value REAL,                       -- NULL when not applicable (e.g. no reference)
        PRIMARY KEY (run_id, item_id, variant, repeat, metric)
    );
    CREATE TABLE verdicts (
        run_id TEXT NOT NULL REFERENCES runs(id),
        judge_id TEXT NOT NULL,
        kind TEXT NOT NULL,               -- rubric | pairwise
        item_id TEXT NOT NULL,
        variant TEXT NOT NULL,            -- judged variant (pairwise: first of the pair)
        other_variant TEXT NOT NULL DEFAULT '',  -- pairwise: second of the pair; '' for rubric
        repeat INTEGER NOT NULL,
        score REAL,                       -- rubric: score on the scale
        passed INTEGER,                   -- rubric with threshold: 1/0
        winner TEXT,                      -- pairwise: a variant id, or 'tie'
        reasoning TEXT,
        raw TEXT,                         -- judge reply text (all replies, JSON list)
        parse_error TEXT,                 -- set when the reply could not be parsed
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost REAL,
        PRIMARY KEY (run_id, judge_id, item_id, variant, other_variant, repeat)
    );
    CREATE TABLE response_cache (
        key TEXT PRIMARY KEY,             -- sha256(provider, model, params, rendered prompt, repeat)
        output TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_s REAL,
        finish_reason TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE result_cache (
        key TEXT PRIMARY KEY,             -- sha256(metric/judge config, implementation version, inputs)
        value_json TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX outputs_by_run ON outputs(run_id);
    CREATE INDEX scores_by_run ON scores(run_id);
    CREATE INDEX verdicts_by_run ON verdicts(run_id);
    """,
    # v2: durable, resumable runs
    """
    ALTER TABLE runs ADD COLUMN owner TEXT;         -- "host:pid:start" of the process running it
    ALTER TABLE runs ADD COLUMN heartbeat_at REAL;  -- refreshed while it runs (see liveness.py)
    ALTER TABLE verdicts ADD COLUMN error TEXT;     -- the judge call itself failed (redone on resume)
    ALTER TABLE verdicts ADD COLUMN key TEXT;       -- judges.judge_key: resume redoes a verdict whose key changed
    """,
    # v3: the version moves to tunelab_schema (storage/sqlite.py). PRAGMA user_version, where v1 and v2 recorded it,
    # stays at 3 so that a tunelab from before the move refuses the file as too new instead of taking it for an
    # empty one and creating the tables again.
    """
    PRAGMA user_version = 3;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class RunInfo:
    id: str
    created_at: float
    finished_at: float | None
    status: str
    description: str | None
    config_path: str | None
    n_items: int = 0
    n_outputs: int = 0
    n_errors: int = 0
    n_verdicts: int = 0
    n_parse_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ResultRow:
    """One item × variant × repeat: what was sent, what came back, how it scored."""

    run_id: str
    item_id: str
    line: int | None
    vars: dict[str, Any]
    reference: Any
    variant: str
    prompt_id: str
    provider_id: str
    repeat: int
    rendered: list[dict[str, str]]
    output: str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float | None
    cost: float | None
    scores: dict[str, float | None] = field(default_factory=dict)
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Store:
    """A results database. `Store(path)` opens (and creates/migrates) it."""

    def __init__(self, path: str | os.PathLike[str] = "tunelab.db", *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # NORMAL is durable across application crashes in WAL mode; only an OS
            # crash can lose the last commits, which a rerun then recomputes.
            self.conn = connect(self.path, timeout_s=timeout_s, synchronous="NORMAL")
        except sqlite3.Error as exc:
            raise EvalError(f"{self.path}: cannot open results database: {exc}") from exc
        migrate(self.conn, "evals", MIGRATIONS, too_new=self._too_new, legacy=_legacy_version, timeout_s=timeout_s)

    # ---- public API -------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return schema_version(self.conn, "evals") or 0

    def runs(self) -> list[RunInfo]:
        """All runs, oldest first, with item/output/error counts."""
        rows = self.conn.execute(
            """SELECT r.*,
                 (SELECT COUNT(*) FROM items i WHERE i.run_id = r.id) AS n_items,
                 (SELECT COUNT(*) FROM outputs o WHERE o.run_id = r.id) AS n_outputs,
                 (SELECT COUNT(*) FROM outputs o WHERE o.run_id = r.id AND o.error IS NOT NULL) AS n_errors,
                 (SELECT COUNT(*) FROM verdicts v WHERE v.run_id = r.id) AS n_verdicts,
                 (SELECT COUNT(*) FROM verdicts v WHERE v.run_id = r.id AND v.parse_error IS NOT NULL)
                   AS n_parse_failures
               FROM runs r ORDER BY r.created_at, r.id"""
        ).fetchall()
        return [
            RunInfo(id=r["id"], created_at=r["created_at"], finished_at=r["finished_at"], status=_status(r),
                    description=r["description"], config_path=r["config_path"], n_items=r["n_items"],
                    n_outputs=r["n_outputs"], n_errors=r["n_errors"], n_verdicts=r["n_verdicts"],
                    n_parse_failures=r["n_parse_failures"])
            for r in rows
        ]

    def resolve_run(self, run_id: str) -> str:
        """`latest` -> the newest run's id; otherwise checks the id exists (a unique prefix is accepted)."""
        if run_id == "latest":
            row = self.conn.execute("SELECT id FROM runs ORDER BY created_at DESC, id DESC LIMIT 1").fetchone()
            if row is None:
                raise EvalError(f"{self.path}: no runs yet; run `tunelab eval CONFIG` first")
            return row["id"]
        rows = self.conn.execute("SELECT id FROM runs WHERE id = ? OR id LIKE ?", (run_id, run_id + "%")).fetchall()
        ids = [r["id"] for r in rows]
        if run_id in ids:
            return run_id
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise EvalError(f"{self.path}: no run with id {run_id!r} (see `tunelab runs`)")
        raise EvalError(f"{self.path}: run id prefix {run_id!r} is ambiguous: {', '.join(ids)}")

    def run_config(self, run_id: str) -> dict[str, Any]:
        row = self.conn.execute("SELECT config_json FROM runs WHERE id = ?", (self.resolve_run(run_id),)).fetchone()
        return json.loads(row["config_json"])

    def results(self, run_id: str) -> list[ResultRow]:
        """One row per item × variant × repeat, ordered by item then variant then repeat."""
        run_id = self.resolve_run(run_id)
        items = {
            r["item_id"]: r
            for r in self.conn.execute("SELECT * FROM items WHERE run_id = ? ORDER BY line, item_id", (run_id,))
        }
        rows: dict[tuple[str, str, int], ResultRow] = {}
        order = {item_id: n for n, item_id in enumerate(items)}
        for o in self.conn.execute("SELECT * FROM outputs WHERE run_id = ?", (run_id,)):
            item = items.get(o["item_id"])
            rows[(o["item_id"], o["variant"], o["repeat"])] = ResultRow(
                run_id=run_id, item_id=o["item_id"], line=item["line"] if item else None,
                vars=json.loads(item["vars_json"]) if item else {},
                reference=json.loads(item["reference_json"]) if item and item["reference_json"] else None,
                variant=o["variant"], prompt_id=o["prompt_id"], provider_id=o["provider_id"], repeat=o["repeat"],
                rendered=json.loads(o["rendered_json"]), output=o["output"], error=o["error"],
                prompt_tokens=o["prompt_tokens"], completion_tokens=o["completion_tokens"],
                latency_s=o["latency_s"], cost=o["cost"],
            )
        for s in self.conn.execute("SELECT * FROM scores WHERE run_id = ? ORDER BY metric", (run_id,)):
            row = rows.get((s["item_id"], s["variant"], s["repeat"]))
            if row is not None:
                row.scores[s["metric"]] = s["value"]
        for v in self.conn.execute("SELECT * FROM verdicts WHERE run_id = ? ORDER BY judge_id", (run_id,)):
            verdict = _verdict_dict(v)
            for variant in (v["variant"], v["other_variant"]):
                row = rows.get((v["item_id"], variant, v["repeat"]))
                if row is not None and variant:
                    if v["kind"] == "pairwise":
                        # From this row's point of view: 1 win, 0.5 tie, 0 loss.
                        w = v["winner"]
                        verdict = dict(verdict, score=None if w is None else 0.5 if w == "tie" else float(w == variant))
                    row.judges[v["judge_id"]] = verdict
        return sorted(rows.values(), key=lambda r: (order.get(r.item_id, 1 << 30), r.item_id, r.variant, r.repeat))

    # ---- writes (used by the runner) -------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (storage.sqlite.immediate): a concurrent writer
        waits on busy_timeout instead of failing mid-transaction."""
        with immediate(self.conn, 60.0) as conn:
            yield conn

    def create_run(self, config_json: dict[str, Any], *, description: str | None, config_path: str | None) -> str:
        """A new run, owned by this process until it finishes."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        now = time.time()
        with self.transaction() as c:
            c.execute(
                "INSERT INTO runs (id, created_at, status, description, config_path, config_json, owner, heartbeat_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, now, "running", description, config_path, json.dumps(config_json), this_process(), now),
            )
        return run_id

    def claim_run(self, run_id: str, config_json: dict[str, Any]) -> None:
        """Take over a run to resume it; refused while its owner is still alive."""
        with self.transaction() as c:
            r = c.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if _status(r) == "running":
                raise EvalError(f"{self.path}: run {run_id} is still running (owner {r['owner']}); "
                                "wait for it to finish, or stop that process and resume again")
            c.execute("UPDATE runs SET status = 'running', finished_at = NULL, owner = ?, heartbeat_at = ?, "
                      "config_json = ? WHERE id = ?", (this_process(), time.time(), json.dumps(config_json), run_id))

    def heartbeat(self, run_id: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id))

    def set_run_status(self, run_id: str, status: str, config_json: dict[str, Any] | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?",
                      (status, time.time() if status != "running" else None, run_id))
            if config_json is not None:
                c.execute("UPDATE runs SET config_json = ? WHERE id = ?", (json.dumps(config_json), run_id))

    def delete_runs(self, run_ids: list[str]) -> None:
        """Remove runs and everything recorded for them (the caches stay: they are shared)."""
        with self.transaction() as c:
            for table in ("scores", "verdicts", "outputs", "items", "runs"):
                column = "id" if table == "runs" else "run_id"
                c.executemany(f"DELETE FROM {table} WHERE {column} = ?", [(r,) for r in run_ids])

    def put_items(self, run_id: str, items: list[tuple[str, int | None, dict[str, Any], Any]]) -> None:
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO items (run_id, item_id, line, vars_json, reference_json) VALUES (?,?,?,?,?)",
                [(run_id, i, line, json.dumps(v), None if ref is None else json.dumps(ref)) for i, line, v, ref in items],
            )

    def put_outputs(self, run_id: str, outputs: list[dict[str, Any]]) -> None:
        with self.transaction() as c:
            c.executemany(_PUT_OUTPUT, [dict(o, run_id=run_id, created_at=time.time()) for o in outputs])

    def put_arrivals(self, run_id: str, outputs: list[dict[str, Any]], responses: list[tuple[Any, ...]],
                     verdicts: list[dict[str, Any]], results: dict[str, Any]) -> None:
        """Whatever arrived together (outputs, judge verdicts and their cache entries), in one transaction."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(_PUT_OUTPUT, [dict(o, run_id=run_id, created_at=now) for o in outputs])
            c.executemany(_PUT_RESPONSE, [(*r, now) for r in responses])
            c.executemany(_PUT_VERDICT, [dict({"error": None, "key": None}, **v, run_id=run_id) for v in verdicts])
            c.executemany("INSERT OR REPLACE INTO result_cache (key, value_json, created_at) VALUES (?,?,?)",
                          [(k, json.dumps(v), now) for k, v in results.items()])

    def put_scores(self, run_id: str, scores: list[tuple[str, str, int, str, float | None]]) -> None:
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO scores (run_id, item_id, variant, repeat, metric, value) VALUES (?,?,?,?,?,?)",
                [(run_id, *s) for s in scores],
            )

    def put_verdicts(self, run_id: str, verdicts: list[dict[str, Any]]) -> None:
        self.put_arrivals(run_id, [], [], verdicts, {})

    def existing_outputs(self, run_id: str) -> dict[tuple[str, str, int], sqlite3.Row]:
        return {(r["item_id"], r["variant"], r["repeat"]): r
                for r in self.conn.execute("SELECT * FROM outputs WHERE run_id = ?", (run_id,))}

    def existing_scores(self, run_id: str) -> set[tuple[str, str, int, str]]:
        return {(r[0], r[1], r[2], r[3]) for r in self.conn.execute(
            "SELECT item_id, variant, repeat, metric FROM scores WHERE run_id = ?", (run_id,))}

    def existing_verdicts(self, run_id: str) -> dict[tuple[str, str, str, str, int], str | None]:
        """(judge, item, variant, other variant, repeat) -> the verdict's key, for verdicts whose call
        succeeded (a parse failure is a result; a failed call is not)."""
        return {(r[0], r[1], r[2], r[3], r[4]): r[5] for r in self.conn.execute(
            "SELECT judge_id, item_id, variant, other_variant, repeat, key FROM verdicts "
            "WHERE run_id = ? AND error IS NULL", (run_id,))}

    # ---- cache tables (see cache.py for the keys) --------------------------

    def cache_get_response(self, key: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM response_cache WHERE key = ?", (key,)).fetchone()

    def cache_put_responses(self, rows: list[tuple[str, str, int | None, int | None, float | None, str | None]]) -> None:
        with self.transaction() as c:
            c.executemany(_PUT_RESPONSE, [(*r, time.time()) for r in rows])

    def cache_get_results(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.conn.execute(f"SELECT key, value_json FROM result_cache WHERE key IN ({marks})", chunk):
                found[r["key"]] = json.loads(r["value_json"])
        return found

    def cache_put_results(self, items: dict[str, Any]) -> None:
        if not items:
            return
        now = time.time()
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO result_cache (key, value_json, created_at) VALUES (?,?,?)",
                          [(k, json.dumps(v), now) for k, v in items.items()])

    # ---- helpers ----------------------------------------------------------

    def _too_new(self, found: int, known: int) -> EvalError:
        return EvalError(f"{self.path}: database schema v{found} is newer than this tunelab (v{known}); "
                         "upgrade tunelab")


def _legacy_version(conn: sqlite3.Connection) -> int:
    """The version a results file from before tunelab_schema (v1, v2) recorded in PRAGMA user_version; 0 for a
    file without the evals tables (new, or holding only review's)."""
    if not table_exists(conn, "runs"):
        return 0
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


_PUT_OUTPUT = """INSERT OR REPLACE INTO outputs (run_id, item_id, variant, prompt_id, provider_id, repeat,
    rendered_json, output, error, prompt_tokens, completion_tokens, latency_s, cost, cached, created_at)
    VALUES (:run_id, :item_id, :variant, :prompt_id, :provider_id, :repeat, :rendered_json, :output,
    :error, :prompt_tokens, :completion_tokens, :latency_s, :cost, :cached, :created_at)"""

_PUT_VERDICT = """INSERT OR REPLACE INTO verdicts (run_id, judge_id, kind, item_id, variant, other_variant, repeat,
    score, passed, winner, reasoning, raw, parse_error, error, key, prompt_tokens, completion_tokens, cost)
    VALUES (:run_id, :judge_id, :kind, :item_id, :variant, :other_variant, :repeat, :score, :passed,
    :winner, :reasoning, :raw, :parse_error, :error, :key, :prompt_tokens, :completion_tokens, :cost)"""

_PUT_RESPONSE = """INSERT OR REPLACE INTO response_cache
    (key, output, prompt_tokens, completion_tokens, latency_s, finish_reason, created_at) VALUES (?,?,?,?,?,?,?)"""


def _status(r: sqlite3.Row) -> str:
    """The stored status, except that a `running` run whose process is gone is `interrupted`."""
    if r["status"] == "running" and not owner_alive(r["owner"], r["heartbeat_at"]):
        return "interrupted"
    return r["status"]


def _verdict_dict(v: sqlite3.Row) -> dict[str, Any]:
    return {
        "kind": v["kind"], "score": v["score"], "passed": None if v["passed"] is None else bool(v["passed"]),
        "winner": v["winner"], "pair": [v["variant"], v["other_variant"]] if v["kind"] == "pairwise" else None,
        "reasoning": v["reasoning"], "raw": json.loads(v["raw"]) if v["raw"] else None,
        "parse_error": v["parse_error"], "error": v["error"], "prompt_tokens": v["prompt_tokens"],
        "completion_tokens": v["completion_tokens"], "cost": v["cost"],
    }
