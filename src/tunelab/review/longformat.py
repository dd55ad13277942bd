"""The long format every human judgement travels in: one row per item × rater × dimension.

Columns: item_id, rater, dimension, score, preference, comment, timestamp. A row
has a numeric score (rating mode) or a preference A / B / tie (pairwise mode,
in variant terms: A is the first variant). CSV and JSONL carry the same rows;
timestamps are ISO 8601 UTC on the way out, ISO or epoch seconds on the way in.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from tunelab.io.records import csv_text, jsonl_text, records as read_records
from tunelab.review.errors import ReviewError
from tunelab.review.store import Rating

COLUMNS = ["item_id", "rater", "dimension", "score", "preference", "comment", "timestamp"]
PREFERENCES = ("A", "B", "tie")


def dumps(ratings: list[Rating], fmt: str) -> str:
    rows = [_row(r) for r in ratings]
    if fmt == "jsonl":
        return jsonl_text(rows)
    if fmt == "csv":
        return csv_text(rows, COLUMNS)
    raise ReviewError(f"--format: expected csv or jsonl, got {fmt!r}")


def load(path: str | Path) -> list[Rating]:
    """Read a long-format CSV or JSONL file (chosen by extension; .jsonl/.json else CSV)."""
    path = Path(path)
    records = read_records(path, ReviewError, "ratings", required_columns={"item_id", "rater", "dimension"})
    # A review export also holds skips, flags and replaced answers (column `state`): only `rated` rows are judgements.
    return [_rating(path, n, obj) for n, obj in records if obj.get("state") in (None, "", "rated")]


def _row(r: Rating) -> dict:
    ts = datetime.fromtimestamp(r.timestamp, tz=timezone.utc).isoformat(timespec="seconds")
    score = None if r.score is None else (int(r.score) if float(r.score).is_integer() else r.score)
    return {"item_id": r.item_id, "rater": r.rater, "dimension": r.dimension, "score": score,
            "preference": r.preference, "comment": r.comment or "", "timestamp": ts}


def _rating(path: Path, n: int, obj: dict) -> Rating:
    where = f"{path}:{n}"
    for key in ("item_id", "rater", "dimension"):
        if obj.get(key) in (None, ""):
            raise ReviewError(f"{where}: field {key!r} is empty")
    score, pref = obj.get("score"), obj.get("preference")
    score = None if score in (None, "") else score
    pref = None if pref in (None, "") else str(pref)
    if (score is None) == (pref is None):
        raise ReviewError(f"{where}: expected exactly one of 'score' or 'preference'")
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise ReviewError(f"{where}: field 'score' must be a number, got {score!r}") from None
        if not math.isfinite(score):
            raise ReviewError(f"{where}: field 'score' must be finite")
    if pref is not None and pref not in PREFERENCES:
        raise ReviewError(f"{where}: field 'preference' must be A, B or tie, got {pref!r}")
    return Rating(str(obj["item_id"]), str(obj["rater"]), str(obj["dimension"]), score, pref,
                  str(obj.get("comment") or ""), _timestamp(where, obj.get("timestamp")))


def _timestamp(where: str, value) -> float:
    if value in (None, ""):
        return datetime.now(timezone.utc).timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        ts = datetime.fromisoformat(str(value))
    except ValueError:
        raise ReviewError(f"{where}: field 'timestamp' must be ISO 8601 or epoch seconds, got {value!r}") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.timestamp()


def load_scores(path: str | Path):
    """Automated scores: CSV or JSONL rows with item_id, metric, value (optional dimension, kind).
    A value of A / B / tie is a pairwise judge's verdict; true / false / pass / fail a pass/fail."""
    from tunelab.review.agreement import AutoScore

    path = Path(path)
    records = read_records(path, ReviewError, "scores")
    out = []
    for n, obj in records:
        for key in ("item_id", "metric", "value"):
            if obj.get(key) in (None, ""):
                raise ReviewError(f"{path}:{n}: field {key!r} is missing or empty")
        kind = obj.get("kind") or None
        if kind not in (None, "score", "pass_fail", "pairwise"):
            raise ReviewError(f"{path}:{n}: field 'kind' must be score, pass_fail or pairwise, got {kind!r}")
        value = obj["value"]
        if isinstance(value, str) and value not in PREFERENCES and value.lower() not in ("pass", "fail", "true", "false"):
            try:
                value = float(value)
            except ValueError:
                raise ReviewError(f"{path}:{n}: field 'value' must be a number, pass/fail or A/B/tie, "
                                  f"got {value!r}") from None
        out.append(AutoScore(str(obj["item_id"]), str(obj["metric"]), value, obj.get("dimension") or None, kind))
    return out
