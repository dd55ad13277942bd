"""Review tables in the shared tunelab SQLite file.

Everything human review needs lives in tables prefixed `review_`, next to the
evaluation store's tables in the same file (default ./tunelab.db). WAL mode plus
one short transaction per submission means a rating is on disk the moment the
rater's POST returns, so killing the server (even with SIGKILL) loses nothing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.evals.store import retry_locked
from tunelab.review.errors import ReviewError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS review_tasks (
    name TEXT PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('single', 'pairwise')),
    dimensions TEXT NOT NULL,          -- JSON list
    scale_min INTEGER NOT NULL,
    scale_max INTEGER NOT NULL,
    raters_per_item INTEGER NOT NULL,
    source TEXT NOT NULL,              -- 'run:<id>' or 'file:<path>'
    salt TEXT NOT NULL,                -- keys the per-rater left/right shuffle
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_items (
    task TEXT NOT NULL REFERENCES review_tasks(name) ON DELETE CASCADE,
    item_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    input TEXT NOT NULL,
    output_a TEXT NOT NULL,
    output_b TEXT,
    variant_a TEXT,
    variant_b TEXT,
    PRIMARY KEY (task, item_id)
);
CREATE TABLE IF NOT EXISTS review_raters (
    task TEXT NOT NULL REFERENCES review_tasks(name) ON DELETE CASCADE,
    rater TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    PRIMARY KEY (task, rater)
);
CREATE TABLE IF NOT EXISTS review_sessions (
    session_hash TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    rater TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS review_assignments (
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    PRIMARY KEY (task, item_id, rater)
);
CREATE TABLE IF NOT EXISTS review_ratings (
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    dimension TEXT NOT NULL,
    score REAL,
    preference TEXT CHECK (preference IN ('A', 'B', 'tie')),
    comment TEXT NOT NULL DEFAULT '',
    timestamp REAL NOT NULL,
    PRIMARY KEY (task, item_id, rater, dimension)
);
CREATE TABLE IF NOT EXISTS review_skips (
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (task, item_id, rater)
);
"""

@dataclass
class Task:
    name: str
    mode: str  # 'single' or 'pairwise'
    dimensions: list[str]
    scale_min: int
    scale_max: int
    raters_per_item: int
    source: str
    salt: str
    created_at: float = 0.0

    @property
    def pairwise(self) -> bool:
        return self.mode == "pairwise"


@dataclass
class Item:
    item_id: str
    input: str
    output_a: str
    output_b: str | None = None
    variant_a: str | None = None
    variant_b: str | None = None
    position: int = 0


@dataclass
class Rating:
    """One row of the long format: one rater's judgement of one item on one dimension."""

    item_id: str
    rater: str
    dimension: str
    score: float | None = None
    preference: str | None = None  # 'A' / 'B' / 'tie', in variant terms (never left/right)
    comment: str = ""
    timestamp: float = field(default_factory=time.time)


class ReviewStore:
    """Thin data access over the review tables; one connection, serialized by a lock.

    FastAPI runs sync endpoints in a thread pool, so the connection is shared
    across threads (check_same_thread=False) and every access takes the lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise ReviewError(f"{self.path}: cannot open the review database: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        with self._lock:
            # A new file's switch to WAL fails at once ("database is locked") while another
            # connection does the same, without waiting on the timeout: retry it.
            retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"), 30.0)
            # FULL sync: a committed rating must survive power loss, not just a process kill.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            retry_locked(lambda: self._db.executescript(_SCHEMA), 30.0)
            # OR IGNORE: another process opening a new database at the same moment may have written it first.
            retry_locked(lambda: self._db.execute("INSERT OR IGNORE INTO review_meta VALUES ('schema_version', ?)",
                                                  (str(SCHEMA_VERSION),)), 30.0)
            retry_locked(self._db.commit, 30.0)
            row = self._db.execute("SELECT value FROM review_meta WHERE key='schema_version'").fetchone()
            if int(row["value"]) != SCHEMA_VERSION:
                raise ReviewError(
                    f"{self.path}: review schema version {row['value']}, this tunelab understands "
                    f"{SCHEMA_VERSION}; export the ratings with the tunelab that wrote them"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- tasks and items ----------------------------------------------------
    def create_task(self, task: Task, items: list[Item]) -> None:
        with self._lock, self._db:
            if self._db.execute("SELECT 1 FROM review_tasks WHERE name=?", (task.name,)).fetchone():
                raise ReviewError(f"review task {task.name!r} already exists in {self.path}; pick another name")
            self._db.execute(
                "INSERT INTO review_tasks VALUES (?,?,?,?,?,?,?,?,?)",
                (task.name, task.mode, json.dumps(task.dimensions), task.scale_min, task.scale_max,
                 task.raters_per_item, task.source, task.salt, task.created_at or time.time()),
            )
            self._db.executemany(
                "INSERT INTO review_items VALUES (?,?,?,?,?,?,?,?)",
                [(task.name, it.item_id, i, it.input, it.output_a, it.output_b, it.variant_a, it.variant_b)
                 for i, it in enumerate(items)],
            )

    def task(self, name: str) -> Task:
        with self._lock:
            row = self._db.execute("SELECT * FROM review_tasks WHERE name=?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.task_names()) or "none"
            raise ReviewError(f"no review task {name!r} in {self.path} (tasks: {known})")
        return Task(row["name"], row["mode"], json.loads(row["dimensions"]), row["scale_min"], row["scale_max"],
                    row["raters_per_item"], row["source"], row["salt"], row["created_at"])

    def task_names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT name FROM review_tasks ORDER BY created_at")]

    def items(self, task: str) -> list[Item]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM review_items WHERE task=? ORDER BY position", (task,)).fetchall()
        return [_item(r) for r in rows]

    def item(self, task: str, item_id: str) -> Item | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM review_items WHERE task=? AND item_id=?", (task, item_id)).fetchone()
        return _item(r) if r else None

    def item_at(self, task: str, position: int) -> str | None:
        with self._lock:
            r = self._db.execute("SELECT item_id FROM review_items WHERE task=? AND position=?",
                                 (task, position)).fetchone()
        return r[0] if r else None

    # -- raters and sessions ------------------------------------------------
    def add_rater(self, task: str, rater: str, token_hash: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO review_raters VALUES (?,?,?,?) ON CONFLICT(task, rater) "
                "DO UPDATE SET token_hash=excluded.token_hash",
                (task, rater, token_hash, time.time()),
            )
            # A new link replaces the old one, so old sessions go with it.
            self._db.execute("DELETE FROM review_sessions WHERE task=? AND rater=?", (task, rater))

    def raters(self, task: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT rater FROM review_raters WHERE task=? ORDER BY created_at, rater", (task,))]

    def rater_for_token(self, token_hash: str) -> tuple[str, str] | None:
        with self._lock:
            r = self._db.execute("SELECT task, rater FROM review_raters WHERE token_hash=?", (token_hash,)).fetchone()
        return (r["task"], r["rater"]) if r else None

    def create_session(self, session_hash: str, task: str, rater: str, csrf: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT INTO review_sessions VALUES (?,?,?,?,?)",
                             (session_hash, task, rater, csrf, time.time()))

    def session(self, session_hash: str) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute("SELECT * FROM review_sessions WHERE session_hash=?", (session_hash,)).fetchone()

    # -- assignments --------------------------------------------------------
    def assignments(self, task: str, rater: str | None = None) -> list[tuple[str, str]]:
        """(item_id, rater) pairs, in item order."""
        sql = ("SELECT a.item_id, a.rater FROM review_assignments a JOIN review_items i "
               "ON i.task=a.task AND i.item_id=a.item_id WHERE a.task=?")
        args: tuple = (task,)
        if rater is not None:
            sql += " AND a.rater=?"
            args += (rater,)
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(sql + " ORDER BY i.position, a.rater", args)]

    def replace_assignments(self, task: str, pairs: list[tuple[str, str]]) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM review_assignments WHERE task=?", (task,))
            self._db.executemany("INSERT INTO review_assignments VALUES (?,?,?)",
                                 [(task, item, rater) for item, rater in pairs])

    # -- ratings ------------------------------------------------------------
    def submit(self, task: str, ratings: list[Rating]) -> None:
        """Record one item's ratings from one rater; one transaction, committed before returning."""
        with self._lock, self._db:
            for r in ratings:
                self._db.execute(
                    "INSERT INTO review_ratings VALUES (?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(task, item_id, rater, dimension) DO UPDATE SET score=excluded.score, "
                    "preference=excluded.preference, comment=excluded.comment, timestamp=excluded.timestamp",
                    (task, r.item_id, r.rater, r.dimension, r.score, r.preference, r.comment, r.timestamp),
                )
                self._db.execute("DELETE FROM review_skips WHERE task=? AND item_id=? AND rater=?",
                                 (task, r.item_id, r.rater))

    def skip(self, task: str, item_id: str, rater: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO review_skips VALUES (?,?,?,?)", (task, item_id, rater, time.time()))

    def ratings(self, task: str, rater: str | None = None) -> list[Rating]:
        sql = ("SELECT r.* FROM review_ratings r JOIN review_items i ON i.task=r.task AND i.item_id=r.item_id "
               "WHERE r.task=?")
        args: tuple = (task,)
        if rater is not None:
            sql += " AND r.rater=?"
            args += (rater,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY i.position, r.rater, r.dimension", args).fetchall()
        return [Rating(r["item_id"], r["rater"], r["dimension"], r["score"], r["preference"], r["comment"],
                       r["timestamp"]) for r in rows]

    def done_items(self, task: str, rater: str) -> set[str]:
        """Items this rater has rated or skipped."""
        with self._lock:
            rated = {r[0] for r in self._db.execute(
                "SELECT DISTINCT item_id FROM review_ratings WHERE task=? AND rater=?", (task, rater))}
            skipped = {r[0] for r in self._db.execute(
                "SELECT item_id FROM review_skips WHERE task=? AND rater=?", (task, rater))}
        return rated | skipped

    def skipped_items(self, task: str, rater: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute(
                "SELECT item_id FROM review_skips WHERE task=? AND rater=?", (task, rater))}

    def rated_pairs(self, task: str) -> set[tuple[str, str]]:
        with self._lock:
            return {(r[0], r[1]) for r in self._db.execute(
                "SELECT DISTINCT item_id, rater FROM review_ratings WHERE task=?", (task,))}


def _item(r: sqlite3.Row) -> Item:
    return Item(r["item_id"], r["input"], r["output_a"], r["output_b"], r["variant_a"], r["variant_b"], r["position"])
