"""Which variants, metrics and judges something applies to.

Variants are chosen with glob patterns over their ids (`"*@lora"`,
`"few-shot@*"`), and every name a user types (a metric, a judge, a variant) is
checked against what the run actually has, so a typo is an error listing the
choices instead of an empty table or a "-".

A *measure* is a metric id or a judge id; `judge:ID` is accepted for a judge too
(and needed when a metric and a judge share an id).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Iterable

from tunelab.evals.errors import EvalError


def matching(patterns: Iterable[str] | None, variants: list[str], where: str) -> list[str]:
    """The variants (in their order) matched by any pattern; all of them when `patterns` is None.
    A pattern that matches nothing is an error: it is almost always a typo."""
    if patterns is None:
        return list(variants)
    patterns = list(patterns)
    for p in patterns:
        if not any(fnmatchcase(v, p) for v in variants):
            raise EvalError(f"{where}: {p!r} matches no variant (the variants are: {_list(variants)})")
    return [v for v in variants if any(fnmatchcase(v, p) for p in patterns)]


@dataclass
class RunNames:
    """The variants, metric ids and judge ids of one run (or several)."""

    variants: list[str]
    metrics: list[str]
    judges: list[str]
    label: str = "the run"

    @classmethod
    def of(cls, rows: Iterable[Any], config: dict[str, Any] | None = None, label: str = "the run") -> "RunNames":
        rows = list(rows)
        metrics = {m for r in rows for m in r.scores}
        judges = {j for r in rows for j in r.judges}
        for m in (config or {}).get("metrics", []):
            metrics.add(m if isinstance(m, str) else m.get("id") or m.get("name"))
        for j in (config or {}).get("judges", []):
            judges.add(j["id"])
        return cls(sorted({r.variant for r in rows}), sorted(metrics), sorted(judges), label)

    def variant(self, name: str, what: str = "variant") -> str:
        if name not in self.variants:
            raise EvalError(f"{what} {name!r}: {self.label} has no such variant (it has: {_list(self.variants)})")
        return name

    def measure(self, name: str, what: str = "metric") -> str:
        """-> the metric id, or 'judge:ID' for a judge."""
        if name.startswith("judge:") and name[6:] in self.judges:
            return name
        if name in self.metrics:
            return name
        if name in self.judges:
            return f"judge:{name}"
        raise EvalError(f"{what} {name!r}: {self.label} has no such metric or judge "
                        f"(metrics: {_list(self.metrics)}; judges: {_list(self.judges)})")


def select_rows(rows: list[Any], names: RunNames, variants: list[str] | None,
                measures: list[str] | None) -> list[Any]:
    """Rows of matching variants, keeping only the named measures (`--variant`, `--metric`)."""
    if variants:
        keep = set(matching(variants, names.variants, "--variant"))
        rows = [r for r in rows if r.variant in keep]
    if measures:
        wanted = {names.measure(m, "--metric") for m in measures}
        for r in rows:
            r.scores = {k: v for k, v in r.scores.items() if k in wanted}
            r.judges = {k: v for k, v in r.judges.items() if f"judge:{k}" in wanted}
    return rows


def value(row: Any, measure: str) -> float | None:
    """A row's value for a measure ('judge:ID' reads the judge's score)."""
    if measure.startswith("judge:"):
        verdict = row.judges.get(measure[6:])
        return None if verdict is None else verdict.get("score")
    return row.scores.get(measure)


def _list(names: list[str]) -> str:
    return ", ".join(names) if names else "none"
