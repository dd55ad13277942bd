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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.review.errors import ReviewError
from tunelab.review.schema import MIGRATIONS, legacy_version
from tunelab.storage.sqlite import connect, immediate, migrate

FLAG_REASONS = {"broken": "Broken input", "cant_judge": "Can't judge", "offensive": "Offensive"}


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
    guidelines: str = ""  # Markdown, shown before the first item and from every page
    descriptions: dict[str, str] = field(default_factory=dict)  # dimension -> what it asks
    deadline: float | None = None

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
    input_b: str | None = None  # pairwise prompt comparisons: B's input when it differs from A's
    gold: dict | None = None  # calibration: dimension -> known score or preference (A/B/tie)


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


@dataclass
class LogEntry:
    """One action in the audit log: a rating of one dimension, or a skip/flag and its undo."""

    item_id: str
    rater: str
    action: str  # rated, skipped, unskipped, flagged, unflagged
    dimension: str = ""
    score: float | None = None
    preference: str | None = None
    comment: str = ""
    reason: str = ""
    seconds: float | None = None
    timestamp: float = 0.0


class ReviewStore:
    """Thin data access over the review tables; one connection, serialized by a lock.

    FastAPI runs sync endpoints in a thread pool, so the connection is shared
    across threads (check_same_thread=False) and every access takes the lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        with self._lock:
            try:
                # FULL sync: a committed rating must survive power loss, not just a process kill.
                self._db = connect(self.path, timeout_s=30.0, synchronous="FULL")
            except sqlite3.Error as exc:
                raise ReviewError(f"{self.path}: cannot open the review database: {exc}") from exc
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db, "review", MIGRATIONS, legacy=legacy_version, timeout_s=30.0, too_new=self._too_new)

    def _too_new(self, version: int, known: int) -> ReviewError:
        return ReviewError(f"{self.path}: review schema version {version}, this tunelab understands {known}; "
                           "export the ratings with the tunelab that wrote them")

    @contextmanager
    def _tx(self):
        """One IMMEDIATE transaction under the lock: committed before returning, rolled back on error."""
        with self._lock, immediate(self._db, 30.0) as db:
            yield db

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- tasks and items ----------------------------------------------------
    def create_task(self, task: Task, items: list[Item]) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM review_tasks WHERE name=?", (task.name,)).fetchone():
                raise ReviewError(f"review task {task.name!r} already exists in {self.path}; pick another name")
            db.execute(
                "INSERT INTO review_tasks (name, mode, dimensions, scale_min, scale_max, raters_per_item, source, "
                "salt, created_at, guidelines, descriptions, deadline) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (task.name, task.mode, json.dumps(task.dimensions), task.scale_min, task.scale_max,
                 task.raters_per_item, task.source, task.salt, task.created_at or time.time(), task.guidelines,
                 json.dumps(task.descriptions), task.deadline),
            )
            db.executemany(
                "INSERT INTO review_items (task, item_id, position, input, output_a, output_b, variant_a, variant_b, "
                "input_b, gold) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(task.name, it.item_id, i, it.input, it.output_a, it.output_b, it.variant_a, it.variant_b,
                  it.input_b, None if it.gold is None else json.dumps(it.gold)) for i, it in enumerate(items)],
            )

    def task(self, name: str) -> Task:
        rows = self._q("SELECT * FROM review_tasks WHERE name=?", (name,))
        if not rows:
            known = ", ".join(self.task_names()) or "none"
            raise ReviewError(f"no review task {name!r} in {self.path} (tasks: {known})")
        r = rows[0]
        return Task(r["name"], r["mode"], json.loads(r["dimensions"]), r["scale_min"], r["scale_max"],
                    r["raters_per_item"], r["source"], r["salt"], r["created_at"], r["guidelines"],
                    json.loads(r["descriptions"]), r["deadline"])

    def set_deadline(self, name: str, deadline: float | None) -> None:
        self.task(name)
        with self._tx() as db:
            db.execute("UPDATE review_tasks SET deadline=? WHERE name=?", (deadline, name))

    def task_names(self) -> list[str]:
        return [r[0] for r in self._q("SELECT name FROM review_tasks ORDER BY created_at")]

    def items(self, task: str) -> list[Item]:
        return [_item(r) for r in self._q("SELECT * FROM review_items WHERE task=? ORDER BY position", (task,))]

    def item(self, task: str, item_id: str) -> Item | None:
        rows = self._q("SELECT * FROM review_items WHERE task=? AND item_id=?", (task, item_id))
        return _item(rows[0]) if rows else None

    # -- raters and sessions ------------------------------------------------
    def add_rater(self, task: str, rater: str, token_hash: str, link_expires: float) -> None:
        """Register a rater or re-issue their link (which ends their sessions); a removed rater comes back."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO review_raters (task, rater, token_hash, created_at, link_expires) VALUES (?,?,?,?,?) "
                "ON CONFLICT(task, rater) DO UPDATE SET token_hash=excluded.token_hash, "
                "link_expires=excluded.link_expires, link_uses=0, removed_at=NULL",
                (task, rater, token_hash, time.time(), link_expires),
            )
            db.execute("DELETE FROM review_sessions WHERE task=? AND rater=?", (task, rater))

    def remove_rater(self, task: str, rater: str) -> None:
        """End a rater's sessions and link; their submitted work stays (rebalance frees their open items)."""
        with self._tx() as db:
            n = db.execute("UPDATE review_raters SET removed_at=?, token_hash='removed:'||task||'|'||rater "
                           "WHERE task=? AND rater=? AND removed_at IS NULL", (time.time(), task, rater)).rowcount
            if not n:
                raise ReviewError(f"task {task!r} has no active rater {rater!r}")
            db.execute("DELETE FROM review_sessions WHERE task=? AND rater=?", (task, rater))

    def raters(self, task: str, removed: bool = False) -> list[str]:
        """Active raters (or, with removed=True, everyone who ever rated on the task)."""
        cond = "" if removed else " AND removed_at IS NULL"
        return [r[0] for r in self._q(
            f"SELECT rater FROM review_raters WHERE task=?{cond} ORDER BY created_at, rater", (task,))]

    def use_link(self, token_hash: str, max_uses: int) -> tuple[str, str] | None:
        """(task, rater) for a valid sign-in link, counting one use; None when unknown, expired or used up."""
        with self._tx() as db:
            r = db.execute("SELECT task, rater, link_expires, link_uses FROM review_raters WHERE token_hash=? "
                           "AND removed_at IS NULL", (token_hash,)).fetchone()
            if r is None or (r["link_expires"] is not None and r["link_expires"] < time.time()) \
                    or r["link_uses"] >= max_uses:
                return None
            db.execute("UPDATE review_raters SET link_uses=link_uses+1 WHERE token_hash=?", (token_hash,))
        return r["task"], r["rater"]

    def peek_link(self, token_hash: str, max_uses: int | None) -> tuple[str, str] | None:
        """Like use_link, without counting a use (the page that asks the rater to confirm);
        max_uses None: whose unexpired link this is, however often it was used."""
        r = self._q("SELECT task, rater, link_expires, link_uses FROM review_raters WHERE token_hash=? "
                    "AND removed_at IS NULL", (token_hash,))
        if not r or (r[0]["link_expires"] is not None and r[0]["link_expires"] < time.time()) \
                or (max_uses is not None and r[0]["link_uses"] >= max_uses):
            return None
        return r[0]["task"], r[0]["rater"]

    def create_session(self, session_hash: str, task: str, rater: str, csrf: str, expires_at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO review_sessions (session_hash, task, rater, csrf, created_at, expires_at) "
                       "VALUES (?,?,?,?,?,?)", (session_hash, task, rater, csrf, time.time(), expires_at))

    def session(self, session_hash: str) -> sqlite3.Row | None:
        rows = self._q("SELECT * FROM review_sessions WHERE session_hash=? AND expires_at > ?",
                       (session_hash, time.time()))
        return rows[0] if rows else None

    def end_session(self, session_hash: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM review_sessions WHERE session_hash=?", (session_hash,))
            db.execute("DELETE FROM review_admin_sessions WHERE session_hash=?", (session_hash,))

    def add_admin_link(self, link_hash: str, expires_at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO review_admin_links VALUES (?,?,NULL)", (link_hash, expires_at))

    def use_admin_link(self, link_hash: str, session_hash: str, csrf: str, session_expires: float) -> bool:
        """Spend a single-use admin link on a new admin session."""
        with self._tx() as db:
            n = db.execute("UPDATE review_admin_links SET used_at=? WHERE link_hash=? AND used_at IS NULL "
                           "AND expires_at > ?", (time.time(), link_hash, time.time())).rowcount
            if n:
                db.execute("INSERT INTO review_admin_sessions VALUES (?,?,?)", (session_hash, csrf, session_expires))
        return bool(n)

    def admin_link_valid(self, link_hash: str) -> bool:
        return bool(self._q("SELECT 1 FROM review_admin_links WHERE link_hash=? AND used_at IS NULL AND "
                            "expires_at > ?", (link_hash, time.time())))

    def admin_session(self, session_hash: str) -> sqlite3.Row | None:
        rows = self._q("SELECT * FROM review_admin_sessions WHERE session_hash=? AND expires_at > ?",
                       (session_hash, time.time()))
        return rows[0] if rows else None

    # -- assignments --------------------------------------------------------
    def assignments(self, task: str, rater: str | None = None) -> list[tuple[str, str]]:
        """(item_id, rater) pairs, in item order."""
        sql = ("SELECT a.item_id, a.rater FROM review_assignments a JOIN review_items i "
               "ON i.task=a.task AND i.item_id=a.item_id WHERE a.task=?")
        args: tuple = (task,)
        if rater is not None:
            sql += " AND a.rater=?"
            args += (rater,)
        return [(r[0], r[1]) for r in self._q(sql + " ORDER BY i.position, a.rater", args)]

    def replace_assignments(self, task: str, pairs: list[tuple[str, str]]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM review_assignments WHERE task=?", (task,))
            db.executemany("INSERT INTO review_assignments VALUES (?,?,?)",
                           [(task, item, rater) for item, rater in pairs])

    def started_pairs(self, task: str) -> set[tuple[str, str]]:
        """(item, rater) pairs a rater has opened, rated, skipped or flagged: theirs to keep on rebalance."""
        return {(r[0], r[1]) for r in self._q(
            "SELECT item_id, rater FROM review_views WHERE task=? UNION SELECT item_id, rater FROM review_ratings "
            "WHERE task=? UNION SELECT item_id, rater FROM review_skips WHERE task=? UNION "
            "SELECT item_id, rater FROM review_flags WHERE task=?", (task,) * 4)}

    # -- what raters did ----------------------------------------------------
    def opened(self, task: str, item_id: str, rater: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO review_views VALUES (?,?,?,?,?) ON CONFLICT(task, item_id, rater) "
                       "DO UPDATE SET last_opened=excluded.last_opened", (task, item_id, rater, now, now))

    def submit(self, task: str, ratings: list[Rating]) -> None:
        """Record one item's ratings from one rater; one transaction, committed before returning.
        The latest answer per dimension is current; every submission stays in the log."""
        with self._tx() as db:
            for r in ratings:
                opened = db.execute("SELECT last_opened FROM review_views WHERE task=? AND item_id=? AND rater=?",
                                    (task, r.item_id, r.rater)).fetchone()
                seconds = None if opened is None else max(0.0, r.timestamp - opened[0])
                db.execute(
                    "INSERT INTO review_ratings VALUES (?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(task, item_id, rater, dimension) DO UPDATE SET score=excluded.score, "
                    "preference=excluded.preference, comment=excluded.comment, timestamp=excluded.timestamp",
                    (task, r.item_id, r.rater, r.dimension, r.score, r.preference, r.comment, r.timestamp),
                )
                db.execute("INSERT INTO review_log (task, item_id, rater, action, dimension, score, preference, "
                           "comment, seconds, timestamp) VALUES (?,?,?,'rated',?,?,?,?,?,?)",
                           (task, r.item_id, r.rater, r.dimension, r.score, r.preference, r.comment, seconds,
                            r.timestamp))
                if db.execute("DELETE FROM review_skips WHERE task=? AND item_id=? AND rater=?",
                              (task, r.item_id, r.rater)).rowcount:
                    self._log(db, task, r.item_id, r.rater, "unskipped")

    def skip(self, task: str, item_id: str, rater: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO review_skips VALUES (?,?,?,?)", (task, item_id, rater, time.time()))
            self._log(db, task, item_id, rater, "skipped")

    def flag(self, task: str, item_id: str, rater: str, reason: str, note: str = "") -> None:
        if reason not in FLAG_REASONS:
            raise ReviewError(f"flag reason: expected one of {', '.join(FLAG_REASONS)}, got {reason!r}")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO review_flags VALUES (?,?,?,?,?,?)",
                       (task, item_id, rater, reason, note, time.time()))
            self._log(db, task, item_id, rater, "flagged", reason=reason, comment=note)

    def undo(self, task: str, item_id: str, rater: str) -> list[str]:
        """Take back this rater's skip and flag on an item; returns what was undone."""
        done = []
        with self._tx() as db:
            if db.execute("DELETE FROM review_skips WHERE task=? AND item_id=? AND rater=?",
                          (task, item_id, rater)).rowcount:
                self._log(db, task, item_id, rater, "unskipped")
                done.append("skip")
            if db.execute("DELETE FROM review_flags WHERE task=? AND item_id=? AND rater=?",
                          (task, item_id, rater)).rowcount:
                self._log(db, task, item_id, rater, "unflagged")
                done.append("flag")
        return done

    @staticmethod
    def _log(db, task: str, item_id: str, rater: str, action: str, reason: str = "", comment: str = "") -> None:
        db.execute("INSERT INTO review_log (task, item_id, rater, action, reason, comment, timestamp) "
                   "VALUES (?,?,?,?,?,?,?)", (task, item_id, rater, action, reason, comment, time.time()))

    def ratings(self, task: str, rater: str | None = None) -> list[Rating]:
        """Current ratings (each rater's latest answer per item and dimension), in item order."""
        sql = ("SELECT r.* FROM review_ratings r JOIN review_items i ON i.task=r.task AND i.item_id=r.item_id "
               "WHERE r.task=?")
        args: tuple = (task,)
        if rater is not None:
            sql += " AND r.rater=?"
            args += (rater,)
        rows = self._q(sql + " ORDER BY i.position, r.rater, r.dimension", args)
        return [Rating(r["item_id"], r["rater"], r["dimension"], r["score"], r["preference"], r["comment"],
                       r["timestamp"]) for r in rows]

    def log(self, task: str) -> list[LogEntry]:
        """Every action on the task in the order it happened."""
        return [LogEntry(r["item_id"], r["rater"], r["action"], r["dimension"], r["score"], r["preference"],
                         r["comment"], r["reason"], r["seconds"], r["timestamp"])
                for r in self._q("SELECT * FROM review_log WHERE task=? ORDER BY seq", (task,))]

    def rated_items(self, task: str, rater: str) -> set[str]:
        return {r[0] for r in self._q("SELECT DISTINCT item_id FROM review_ratings WHERE task=? AND rater=?",
                                      (task, rater))}

    def skipped_items(self, task: str, rater: str) -> set[str]:
        return {r[0] for r in self._q("SELECT item_id FROM review_skips WHERE task=? AND rater=?", (task, rater))}

    def skips(self, task: str) -> list[sqlite3.Row]:
        """Current skips of items the rater has not rated since."""
        return self._q("SELECT s.* FROM review_skips s WHERE s.task=? AND NOT EXISTS (SELECT 1 FROM review_ratings r "
                       "WHERE r.task=s.task AND r.item_id=s.item_id AND r.rater=s.rater) ORDER BY timestamp", (task,))

    def flags(self, task: str, rater: str | None = None) -> list[sqlite3.Row]:
        sql, args = "SELECT * FROM review_flags WHERE task=?", (task,)
        if rater is not None:
            sql, args = sql + " AND rater=?", args + (rater,)
        return self._q(sql + " ORDER BY timestamp", args)

    def opened_pairs(self, task: str) -> set[tuple[str, str]]:
        return {(r[0], r[1]) for r in self._q("SELECT item_id, rater FROM review_views WHERE task=?", (task,))}

    def seconds_per_item(self, task: str) -> list[sqlite3.Row]:
        """(item_id, rater, seconds) of each rater's first submission of each item."""
        return self._q("SELECT item_id, rater, MIN(seq), seconds FROM review_log WHERE task=? AND action='rated' "
                       "AND seconds IS NOT NULL GROUP BY item_id, rater", (task,))


def _item(r: sqlite3.Row) -> Item:
    return Item(r["item_id"], r["input"], r["output_a"], r["output_b"], r["variant_a"], r["variant_b"], r["position"],
                r["input_b"], None if r["gold"] is None else json.loads(r["gold"]))
