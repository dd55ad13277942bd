"""Dataset rows: .jsonl (one JSON object per line) or .csv (header row), or a
list of dicts from the Python API. Each row is template variables plus an
optional `reference` and `id`. Errors name the file and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.evals.errors import EvalError
from tunelab.io.records import csv_records, jsonl_records


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
        return _rows(jsonl_records(path, EvalError, "dataset"), str(path))
    if path.suffix == ".csv":
        return _rows(_csv(path), str(path))
    raise EvalError(f"{path}: unsupported dataset format {path.suffix!r} (expected .jsonl or .csv)")


def _csv(path: Path) -> list[tuple[int, Any]]:
    # An empty `reference` cell means "no reference", not a reference that is the empty string.
    return [(n, {k: v for k, v in record.items() if not (k == "reference" and v == "")})
            for n, record in csv_records(path, EvalError, "dataset")]


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
