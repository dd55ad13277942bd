"""The review tables in the shared SQLite file, and the upgrade of files written by older tunelab.

The version is the "review" component's in `tunelab_schema` (tunelab.storage.sqlite); files from before v3 kept it
in `review_meta`, read once by `legacy_version`. Version 1 is kept verbatim: a new file is created as v1 and then
upgraded, so new and old files take the same path and the upgrade is exercised on every fresh database.
"""

import sqlite3

from tunelab.storage.sqlite import table_exists

SCHEMA_V1 = """
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
    salt TEXT NOT NULL,                -- keys the per-rater order and left/right shuffle
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

# v1 -> v2: guidelines and dimension descriptions, a deadline, gold answers, B's own input,
# bounded sign-in links, expiring sessions, removed raters, flags, the opened-items record
# (locks work in progress, times each item) and an append-only log of every action.
MIGRATE_V2 = """
ALTER TABLE review_tasks ADD COLUMN guidelines TEXT NOT NULL DEFAULT '';
ALTER TABLE review_tasks ADD COLUMN descriptions TEXT NOT NULL DEFAULT '{}';
ALTER TABLE review_tasks ADD COLUMN deadline REAL;
ALTER TABLE review_items ADD COLUMN input_b TEXT;
ALTER TABLE review_items ADD COLUMN gold TEXT;
ALTER TABLE review_raters ADD COLUMN link_expires REAL;
ALTER TABLE review_raters ADD COLUMN link_uses INTEGER NOT NULL DEFAULT 0;
ALTER TABLE review_raters ADD COLUMN removed_at REAL;
ALTER TABLE review_sessions ADD COLUMN expires_at REAL;
UPDATE review_sessions SET expires_at = created_at + 604800;
CREATE TABLE review_admin_links (
    link_hash TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    used_at REAL
);
CREATE TABLE review_admin_sessions (
    session_hash TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE review_flags (
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    reason TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    timestamp REAL NOT NULL,
    PRIMARY KEY (task, item_id, rater)
);
CREATE TABLE review_views (
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    first_opened REAL NOT NULL,
    last_opened REAL NOT NULL,
    PRIMARY KEY (task, item_id, rater)
);
CREATE TABLE review_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    action TEXT NOT NULL,              -- rated, skipped, unskipped, flagged, unflagged
    dimension TEXT NOT NULL DEFAULT '',
    score REAL,
    preference TEXT,
    comment TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    seconds REAL,                      -- page open to submit, for 'rated'
    timestamp REAL NOT NULL
);
CREATE INDEX review_log_task ON review_log(task, rater, item_id);
INSERT INTO review_log (task, item_id, rater, action, dimension, score, preference, comment, timestamp)
    SELECT task, item_id, rater, 'rated', dimension, score, preference, comment, timestamp FROM review_ratings
    ORDER BY timestamp;
INSERT INTO review_log (task, item_id, rater, action, timestamp)
    SELECT task, item_id, rater, 'skipped', timestamp FROM review_skips ORDER BY timestamp;
"""


# v2 -> v3: the version moves to tunelab_schema. review_meta stays, saying 3, so that a tunelab from before the move
# refuses the file with its own clear message ("export the ratings with the tunelab that wrote them") rather than
# taking it for a new file and migrating it again.
MIGRATE_V3 = """
DELETE FROM review_meta;
INSERT INTO review_meta VALUES ('schema_version', '3');
"""

MIGRATIONS = (SCHEMA_V1, MIGRATE_V2, MIGRATE_V3)
SCHEMA_VERSION = len(MIGRATIONS)


def legacy_version(conn: sqlite3.Connection) -> int:
    """The version a file from before v3 recorded in review_meta (0: no review tables yet)."""
    if not table_exists(conn, "review_meta"):
        return 0
    row = conn.execute("SELECT value FROM review_meta WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])
