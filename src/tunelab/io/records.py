"""Data files as (line number, record) pairs: JSONL (one JSON object per line) or CSV
with a header row. Every error names the file and the line, so a bad row in a
dataset, training file, review items or ratings is found without a debugger.
The way back, records to JSONL or CSV text, is here too (`jsonl_text`, `csv_text`).

The caller passes its package's error type (`EvalError`, `TrainError`, `ReviewError`):
one error type per package family, one reader for all of them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

# Extensions read as JSONL by `records`; anything else is CSV.
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def records(path: str | Path, error: type[Exception], what: str = "records",
            required_columns: set[str] | frozenset[str] = frozenset()) -> list[tuple[int, dict[str, Any]]]:
    """JSONL by extension (.jsonl, .json, .ndjson), else CSV."""
    path = Path(path)
    if path.suffix.lower() in JSONL_SUFFIXES:
        return jsonl_records(path, error, what)
    return csv_records(path, error, what, required_columns)


def jsonl_records(path: str | Path, error: type[Exception], what: str = "records") -> list[tuple[int, dict[str, Any]]]:
    """Blank lines are skipped; every other line must be one JSON object."""
    path = Path(path)
    out = []
    # Lines end at \n, \r\n or \r (universal newlines), never at the Unicode line separators
    # that str.splitlines() also splits on and that JSON allows inside a string.
    for n, line in enumerate(_text(path, error, what, newline=None).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{n}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise error(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        out.append((n, obj))
    return out


def csv_records(path: str | Path, error: type[Exception], what: str = "records",
                required_columns: set[str] | frozenset[str] = frozenset()) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a CSV file with a header; each row's number is the line it ends on
    (right for quoted fields that span lines too)."""
    path = Path(path)
    # newline="": the csv module itself decides where a record ends (quoted fields may hold newlines).
    reader = csv.DictReader(io.StringIO(_text(path, error, what, newline=""), newline=""))
    if not reader.fieldnames:
        raise error(f"{path}:1: empty CSV (expected a header row)")
    missing = set(required_columns) - set(reader.fieldnames)
    if missing:
        raise error(f"{path}:1: CSV header lacks column(s) {', '.join(sorted(missing))}")
    out = []
    for row in reader:
        if None in row:
            raise error(f"{path}:{reader.line_num}: more values than header columns")
        out.append((reader.line_num, row))
    return out


def jsonl_text(rows: list[dict[str, Any]]) -> str:
    """One JSON object per line, non-ASCII text kept as it is."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def csv_text(rows: list[dict[str, Any]], columns: list[str], cell: Callable[[Any], Any] | None = None,
             lineterminator: str = "\n") -> str:
    """A header row, then one row per record; None is an empty cell. `cell` rewrites each
    value first (the review export defuses spreadsheet formulas this way)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator=lineterminator)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: cell(v) if cell else ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _text(path: Path, error: type[Exception], what: str, newline: str | None) -> str:
    # utf-8-sig: a byte-order mark (spreadsheet exports write one) is not part of the first key.
    try:
        with path.open(encoding="utf-8-sig", newline=newline) as f:
            return f.read()
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
