"""One schema-versioning scheme for every component that keeps tables in the shared SQLite file."""

import sqlite3
import threading

import pytest

from tunelab.storage.sqlite import connect, migrate, retry_locked, schema_version

A = ("CREATE TABLE a_items (id TEXT PRIMARY KEY);", "ALTER TABLE a_items ADD COLUMN note TEXT NOT NULL DEFAULT '';")
B = ("CREATE TABLE b_rows (n INTEGER);",)


class TooNew(Exception):
    pass


def too_new(found, known):
    return TooNew(f"version {found}, this code knows {known}")


def test_components_share_a_file_and_migrate_once(tmp_path):
    conn = connect(tmp_path / "t.db", timeout_s=5)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    migrate(conn, "a", A[:1], too_new=too_new)
    migrate(conn, "b", B, too_new=too_new)
    conn.execute("INSERT INTO a_items (id) VALUES ('x')")
    migrate(conn, "a", A, too_new=too_new)  # a newer release appends a step: only that one runs
    migrate(conn, "a", A, too_new=too_new)  # reopening runs nothing (the ALTER would fail if it ran twice)
    assert (schema_version(conn, "a"), schema_version(conn, "b"), schema_version(conn, "c")) == (2, 1, None)
    assert [tuple(r) for r in conn.execute("SELECT id, note FROM a_items")] == [("x", "")]
    with pytest.raises(TooNew, match="version 2, this code knows 1"):
        migrate(conn, "a", A[:1], too_new=too_new)


def test_legacy_version_is_read_once(tmp_path):
    conn = connect(tmp_path / "t.db", timeout_s=5)
    conn.executescript(A[0] + "PRAGMA user_version = 1;")
    seen = []

    def legacy(c):
        seen.append(1)
        return int(c.execute("PRAGMA user_version").fetchone()[0])

    migrate(conn, "a", A, too_new=too_new, legacy=legacy)
    migrate(conn, "a", A, too_new=too_new, legacy=legacy)
    assert seen == [1] and schema_version(conn, "a") == 2
    assert [r[1] for r in conn.execute("PRAGMA table_info(a_items)")] == ["id", "note"]


def test_a_failed_step_leaves_the_file_as_it_was(tmp_path):
    conn = connect(tmp_path / "t.db", timeout_s=5)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, "a", (*A, "ALTER TABLE missing ADD COLUMN x;"), too_new=too_new)
    assert schema_version(conn, "a") is None
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'a_items'").fetchone() is None


def test_concurrent_first_migration(tmp_path):
    errors = []

    def open_it(path=tmp_path / "new.db"):
        try:
            migrate(connect(path, timeout_s=30), "a", A, too_new=too_new)
        except Exception as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_retry_locked_gives_up_on_other_errors():
    calls = []

    def fails():
        calls.append(1)
        raise sqlite3.OperationalError("no such table: x")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_locked(fails, 5)
    assert calls == [1]
