"""What a review task's export holds: every rater's answers, skips and flags, latest or with history.

The columns extend the long format (`longformat.COLUMNS`) with `state`, `reason` and
`seconds`, so `tunelab agree` reads an export directly: it uses the `rated` rows and
ignores the rest. Latest-only: one `rated` row per item × rater × dimension, plus a
`skipped` or `flagged` row per item a rater set aside. Full history: every action in
the order it happened; an answer later changed is `replaced`, undone skips and flags
appear as `unskipped` / `unflagged`.

CSV cells that a spreadsheet would run as a formula (starting with = + - @, tab or
CR; OWASP's list) get a leading apostrophe.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tunelab.io.records import csv_text, jsonl_text
from tunelab.review.errors import ReviewError
from tunelab.review.longformat import COLUMNS as LONG_COLUMNS
from tunelab.review.store import ReviewStore

COLUMNS = LONG_COLUMNS + ["state", "reason", "seconds"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export_rows(store: ReviewStore, task: str, history: bool = False) -> list[dict]:
    store.task(task)  # unknown task: a clear error
    return _history(store, task) if history else _latest(store, task)


def dumps(rows: list[dict], fmt: str) -> str:
    if fmt == "jsonl":
        return jsonl_text(rows)
    if fmt == "csv":
        # CRLF rows (RFC 4180): the writer then quotes any cell holding a bare CR or LF.
        return csv_text(rows, COLUMNS, cell=_cell, lineterminator="\r\n")
    raise ReviewError(f"--format: expected csv or jsonl, got {fmt!r}")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(FORMULA_START):
        return "'" + v
    return v


def _latest(store: ReviewStore, task: str) -> list[dict]:
    order = {it.item_id: it.position for it in store.items(task)}
    seconds = {(r["item_id"], r["rater"]): r["seconds"] for r in store.seconds_per_item(task)}
    rows = [_row(r.item_id, r.rater, r.dimension, r.score, r.preference, r.comment, r.timestamp, "rated",
                 seconds=seconds.get((r.item_id, r.rater))) for r in store.ratings(task)]
    for s in store.skips(task):
        rows.append(_row(s["item_id"], s["rater"], "", None, None, "", s["timestamp"], "skipped"))
    for f in store.flags(task):
        rows.append(_row(f["item_id"], f["rater"], "", None, None, f["note"], f["timestamp"], "flagged",
                         reason=f["reason"]))
    return sorted(rows, key=lambda r: (order.get(r["item_id"], 0), r["rater"], r["state"] != "rated",
                                       r["dimension"]))


def _history(store: ReviewStore, task: str) -> list[dict]:
    log = store.log(task)
    last = {}
    for n, e in enumerate(log):
        if e.action == "rated":
            last[(e.item_id, e.rater, e.dimension)] = n
    return [_row(e.item_id, e.rater, e.dimension, e.score, e.preference, e.comment, e.timestamp,
                 "replaced" if e.action == "rated" and last[(e.item_id, e.rater, e.dimension)] != n else e.action,
                 reason=e.reason, seconds=e.seconds) for n, e in enumerate(log)]


def _row(item_id, rater, dimension, score, preference, comment, ts, state, reason="", seconds=None) -> dict:
    if score is not None and float(score).is_integer():
        score = int(score)
    return {"item_id": item_id, "rater": rater, "dimension": dimension, "score": score, "preference": preference,
            "comment": comment or "", "timestamp": datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(
                timespec="seconds"), "state": state, "reason": reason,
            "seconds": None if seconds is None else round(seconds, 1)}
