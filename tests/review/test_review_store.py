"""Opening one new review database from several places at once (server and CLI) must not fail."""

import threading

from tunelab.review.store import ReviewStore


def test_concurrent_first_open(tmp_path):
    for trial in range(25):
        errors = []

        def open_it(path=tmp_path / f"new-{trial}.db"):
            try:
                ReviewStore(path).close()
            except Exception as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors


def test_a_v1_database_is_migrated_and_keeps_working(tmp_path):
    """Databases written before guidelines, flags and history keep their tasks, raters, ratings,
    skips and sessions, and gain the new features."""
    import sqlite3
    import time

    from tunelab.review.auth import hash_token
    from tunelab.review.export import export_rows
    from tunelab.review.schema import SCHEMA_V1
    from tunelab.review.store import Rating

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA_V1)
    now = time.time()
    con.executescript(f"""
        INSERT INTO review_meta VALUES ('schema_version', '1');
        INSERT INTO review_tasks VALUES ('t', 'single', '["overall"]', 1, 5, 1, 'file:x', 'salt', {now});
        INSERT INTO review_items VALUES ('t', 'a', 0, 'in a', 'out a', NULL, NULL, NULL);
        INSERT INTO review_items VALUES ('t', 'b', 1, 'in b', 'out b', NULL, NULL, NULL);
        INSERT INTO review_raters VALUES ('t', 'alice', '{hash_token("tok")}', {now});
        INSERT INTO review_sessions VALUES ('{hash_token("sess")}', 't', 'alice', 'csrf', {now});
        INSERT INTO review_assignments VALUES ('t', 'a', 'alice'), ('t', 'b', 'alice');
        INSERT INTO review_ratings VALUES ('t', 'a', 'alice', 'overall', 4, NULL, 'old', {now});
        INSERT INTO review_skips VALUES ('t', 'b', 'alice', {now});
    """)
    con.close()
    store = ReviewStore(db)
    assert [(r.item_id, r.score, r.comment) for r in store.ratings("t")] == [("a", 4.0, "old")]
    assert store.session(hash_token("sess"))["rater"] == "alice"
    assert store.use_link(hash_token("tok"), 5) == ("t", "alice")
    assert [(r["item_id"], r["state"]) for r in export_rows(store, "t")] == [("a", "rated"), ("b", "skipped")]
    store.submit("t", [Rating("a", "alice", "overall", 2.0)])
    assert [r["state"] for r in export_rows(store, "t", history=True)] == ["replaced", "skipped", "rated"]
    store.close()
    assert ReviewStore(db).ratings("t")[0].score == 2.0  # reopening does not migrate twice


def test_a_v2_database_moves_its_version_to_tunelab_schema(tmp_path):
    """Files from before the shared scheme kept the version in review_meta: they open without re-migrating, record
    it in tunelab_schema, and leave review_meta saying 3 so an older tunelab refuses them with its own message."""
    import sqlite3

    from tunelab.review.schema import MIGRATE_V2, SCHEMA_V1, SCHEMA_VERSION
    from tunelab.storage.sqlite import schema_version, statements

    db = tmp_path / "v2.db"
    con = sqlite3.connect(db)
    con.executescript(SCHEMA_V1)
    for stmt in statements(MIGRATE_V2):
        con.execute(stmt)
    con.execute("INSERT INTO review_meta VALUES ('schema_version', '2')")
    con.execute("INSERT INTO review_tasks (name, mode, dimensions, scale_min, scale_max, raters_per_item, source, "
                "salt, created_at, guidelines) VALUES ('t', 'single', '[\"overall\"]', 1, 5, 1, 'file:x', 's', 0, 'g')")
    con.commit()
    con.close()
    ReviewStore(db).close()  # would fail on MIGRATE_V2's ALTERs if it ran them again
    ReviewStore(db).close()
    con = sqlite3.connect(db)
    assert SCHEMA_VERSION == 3 and schema_version(con, "review") == 3
    assert con.execute("SELECT value FROM review_meta").fetchall() == [("3",)]
    assert con.execute("SELECT guidelines FROM review_tasks").fetchall() == [("g",)]


def test_a_database_from_a_newer_tunelab_is_refused(tmp_path):
    import sqlite3

    import pytest

    from tunelab.review.errors import ReviewError

    db = tmp_path / "new.db"
    ReviewStore(db).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE tunelab_schema SET version = 9 WHERE component = 'review'")
    con.commit()
    con.close()
    with pytest.raises(ReviewError, match=r"new\.db: review schema version 9, this tunelab understands 3"):
        ReviewStore(db)
