"""Dataset rows: .jsonl (one JSON object per line) or .csv (header row), or a
list of dicts from the Python API. Each row is template variables plus an
optional `reference` and `id`. Errors name the file and line."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.evals.errors import EvalError


@dataclass
class Row:
    id: str
    vars: dict[str, Any]          # everything except `id` (so `reference` is usable in templates too)
    reference: Any | None
    line: int | None              # 1-based line in the file; index+1 for in-memory rows
    source: str


def load_dataset(source: str | Path | list[dict[str, Any]]) -> list[Row]:
    if isinstance(source, list):
        return _rows([(i + 1, r) for i, r in enumerate(source)], "<dataset>")
    path = Path(source)
    if not path.exists():
        raise EvalError(f"{path}: dataset file not found")
    if path.suffix == ".jsonl":
        return _rows(_jsonl(path), str(path))
    if path.suffix == ".csv":
        return _rows(_csv(path), str(path))
    raise EvalError(f"{path}: unsupported dataset format {path.suffix!r} (expected .jsonl or .csv)")


def _jsonl(path: Path) -> list[tuple[int, Any]]:
    out = []
    with path.open(encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                out.append((n, json.loads(text)))
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}:{n}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return out


def _csv(path: Path) -> list[tuple[int, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise EvalError(f"{path}:1: empty CSV (expected a header row)")
        out = []
        for record in reader:
            # reader.line_num is the line the record *ended* on, right for multi-line fields too.
            if None in record:
                raise EvalError(f"{path}:{reader.line_num}: more values than header columns")
            out.append((reader.line_num, {k: v for k, v in record.items() if not (k == "reference" and v == "")}))
        return out


def _rows(records: list[tuple[int, Any]], source: str) -> list[Row]:
    rows, seen = [], {}
    for line, record in records:
        if not isinstance(record, dict):
            raise EvalError(f"{source}:{line}: expected an object of template variables, got {type(record).__name__}")
        record = dict(record)
        row_id = str(record.pop("id", f"line-{line}"))
        if row_id in seen:
            raise EvalError(f"{source}:{line}: duplicate id {row_id!r} (first on line {seen[row_id]})")
        seen[row_id] = line
        # `references: [...]` (several) or `reference` (one, or a list): reference-based metrics aggregate over them.
        reference = record.get("references", record.get("reference"))
        rows.append(Row(id=row_id, vars=record, reference=reference, line=line, source=source))
    if not rows:
        raise EvalError(f"{source}: dataset is empty")
    return rows
