"""`tunelab results`: one row per item × variant × repeat, as JSON lines or CSV.
CSV flattens scores to `metric:<id>` and verdicts to `judge:<id>` (the score;
`judge:<id>:passed` / `judge:<id>:winner` where they apply) columns."""

from __future__ import annotations

import json
from typing import Any

from tunelab.evals.store import ResultRow
from tunelab.io.records import csv_text, jsonl_text

BASE_COLUMNS = ["run_id", "item_id", "variant", "prompt_id", "provider_id", "repeat", "vars", "reference",
                "output", "error", "latency_s", "prompt_tokens", "completion_tokens", "cost"]


def to_jsonl(rows: list[ResultRow]) -> str:
    return jsonl_text([r.to_dict() for r in rows])


def to_csv(rows: list[ResultRow]) -> str:
    metrics = sorted({m for r in rows for m in r.scores})
    judges = sorted({j for r in rows for j in r.judges})
    extra = [f"metric:{m}" for m in metrics]
    for j in judges:
        extra.append(f"judge:{j}")
        kinds = {r.judges[j]["kind"] for r in rows if j in r.judges}
        extra.append(f"judge:{j}:winner" if "pairwise" in kinds else f"judge:{j}:passed")
        extra.append(f"judge:{j}:parse_error")
    out = []
    for r in rows:
        d: dict[str, Any] = {k: getattr(r, k) for k in BASE_COLUMNS if k not in ("vars", "reference")}
        d["vars"] = json.dumps(r.vars, ensure_ascii=False)
        d["reference"] = "" if r.reference is None else json.dumps(r.reference, ensure_ascii=False)
        for m in metrics:
            d[f"metric:{m}"] = r.scores.get(m)
        for j in judges:
            v = r.judges.get(j) or {}
            d[f"judge:{j}"] = v.get("score")
            if f"judge:{j}:winner" in extra:
                d[f"judge:{j}:winner"] = v.get("winner")
            else:
                d[f"judge:{j}:passed"] = v.get("passed")
            d[f"judge:{j}:parse_error"] = v.get("parse_error")
        out.append(d)
    return csv_text(out, BASE_COLUMNS + extra)
