"""How tunelab opens its SQLite file and upgrades the schemas in it.

One file (default ./tunelab.db) holds the tables of several packages (the evaluation results, human review), so each
package's schema is a *component* with its own version, recorded in one table, `tunelab_schema`. A component's
schema is a tuple of migration scripts: entry i upgrades version i to i + 1, a new file runs them all, and an entry is
never edited once released (append a new one). Older files that recorded their version elsewhere (PRAGMA
user_version, review's `review_meta` table) are read once through `legacy`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SCHEMA_TABLE = "tunelab_schema"


def connect(path: str | Path, *, timeout_s: float, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit, see `immediate`), shared across threads by the
    caller's own lock, with rows as `sqlite3.Row`, in WAL mode and waiting up to `timeout_s` for a busy file.
    Raises sqlite3.Error; the caller names the file in its own error type."""
    conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    # Switching a new file to WAL answers "database is locked" at once, without the busy handler, when another
    # connection is doing the same: retry it ourselves.
    retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), timeout_s)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


@contextmanager
def immediate(conn: sqlite3.Connection, timeout_s: float = 60.0) -> Iterator[sqlite3.Connection]:
    """A short write transaction: committed on exit, rolled back on error. IMMEDIATE takes the write lock up front,
    so a concurrent writer waits instead of failing mid-transaction."""
    retry_locked(lambda: conn.execute("BEGIN IMMEDIATE"), timeout_s)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str], *,
            too_new: Callable[[int, int], Exception], legacy: Callable[[sqlite3.Connection], int] | None = None,
            timeout_s: float = 60.0) -> None:
    """Bring `component`'s tables to version len(migrations), in one IMMEDIATE transaction so that several processes
    opening a new or old file at once migrate it once. `too_new(found, known)` is the error for a file written by a
    newer tunelab; `legacy(conn)` reads the version of a file from before `tunelab_schema` (0 when it has none)."""
    def run() -> None:
        with immediate(conn, timeout_s):
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} "
                         "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            current = schema_version(conn, component)
            if current is None:
                current = legacy(conn) if legacy else 0
            if current > len(migrations):
                raise too_new(current, len(migrations))
            for script in migrations[current:]:
                for statement in statements(script):
                    conn.execute(statement)
            conn.execute(f"INSERT OR REPLACE INTO {SCHEMA_TABLE} VALUES (?, ?)", (component, len(migrations)))

    if schema_version(conn, component) == len(migrations):
        return  # the common case, a file already up to date, takes no write lock
    retry_locked(run, timeout_s)


def schema_version(conn: sqlite3.Connection, component: str) -> int | None:
    """The recorded version of `component`, None when the file has never recorded one."""
    if not table_exists(conn, SCHEMA_TABLE):
        return None
    row = conn.execute(f"SELECT version FROM {SCHEMA_TABLE} WHERE component = ?", (component,)).fetchone()
    return None if row is None else int(row[0])


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def retry_locked(action, timeout_s: float):
    """Run `action`, retrying with backoff while SQLite says the database is locked or busy."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            message = str(exc).lower()
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def statements(script: str) -> list[str]:
    """Split a schema script into statements: executescript() would commit the open transaction. Schemas keep ';'
    and '--' out of string literals."""
    body = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]
