"""The per-variant summary printed after `tunelab eval` and drawn in the report:
each metric's and judge's mean with a 95% CI (stats.interval), *with the count of
outputs it is missing* (failed calls, failed judge calls, unparseable judge
replies) beside it, pass rate, p50/p95 latency, tokens and cost; and each judge's
health: a judge whose replies could not be parsed too often is flagged, because
its figure then rests on few verdicts and a blank is not a low score."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.evals.metrics import is_binary
from tunelab.evals.stats import Estimate, interval, percentile
from tunelab.evals.store import ResultRow

DEFAULT_MAX_PARSE_FAILURE_RATE = 0.2


@dataclass
class Figure:
    """One number of a table and what it rests on."""

    estimate: Estimate | None
    errors: int = 0        # outputs with no value because a call failed (the model's or the judge's)
    unparsed: int = 0      # judge replies that could not be parsed

    def text(self, style: str = "ci") -> str:
        """'0.75 [0.41, 0.93] · 2 err · 3 unparsed'; style 'pm' gives '0.75 ±0.26'."""
        e = self.estimate
        if e is None:
            value = "no value"
        elif style == "pm":
            value = f"{e.mean:.3g} ±{(e.high - e.low) / 2:.2g}"
        else:
            value = f"{e.mean:.3g} [{e.low:.3g}, {e.high:.3g}]"
        notes = ([f"{self.errors} err"] if self.errors else []) + ([f"{self.unparsed} unparsed"] if self.unparsed else [])
        return " · ".join([value, *notes])


@dataclass
class VariantSummary:
    variant: str
    n: int
    errors: int
    metrics: dict[str, Figure] = field(default_factory=dict)
    judges: dict[str, Figure] = field(default_factory=dict)
    pass_rate: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeHealth:
    judge_id: str
    verdicts: int          # verdicts recorded (parse failures included, failed calls included)
    parse_failures: int
    call_errors: int
    threshold: float

    @property
    def rate(self) -> float:
        return self.parse_failures / self.verdicts if self.verdicts else 0.0

    @property
    def flagged(self) -> bool:
        return self.verdicts > 0 and self.rate > self.threshold

    def warning(self) -> str:
        return (f"judge {self.judge_id!r}: {self.parse_failures} of {self.verdicts} replies could not be parsed "
                f"({self.rate:.0%}, above {self.threshold:.0%}); its figures rest on "
                f"{self.verdicts - self.parse_failures - self.call_errors} verdicts and a blank is not a low score. "
                "Use a provider with structured output, a bigger judge model, or read the raw replies: "
                f"`tunelab results RUN --format csv` (column judge:{self.judge_id}:parse_error)")


def summarize(rows: list[ResultRow], metric_names: dict[str, str] | None = None) -> list[VariantSummary]:
    """`metric_names` maps metric id -> metric name, to know which are pass/fail."""
    metric_names = metric_names or {}
    variants: dict[str, list[ResultRow]] = {}
    for r in rows:
        variants.setdefault(r.variant, []).append(r)
    # Pass/fail is a property of the metric, decided over every variant: a score metric that
    # happens to be 0 or 1 for one variant must not get a Wilson interval there and a t one elsewhere.
    values: dict[str, set[float]] = {}
    for r in rows:
        for m, v in r.scores.items():
            if v is not None:
                values.setdefault(m, set()).add(v)
    binary = {m: is_binary(metric_names.get(m, m)) or vs <= {0.0, 1.0} for m, vs in values.items()}
    out = []
    for variant, rs in variants.items():
        ok = [r for r in rs if r.error is None]
        s = VariantSummary(variant=variant, n=len(rs), errors=len(rs) - len(ok))
        for m in sorted({m for r in ok for m in r.scores}):
            s.metrics[m] = Figure(interval([r.scores.get(m) for r in ok], binary=binary.get(m)), errors=s.errors)
        for j in sorted({j for r in ok for j in r.judges}):
            verdicts = [r.judges[j] for r in ok if j in r.judges]
            s.judges[j] = Figure(interval([v["score"] for v in verdicts]),
                                 errors=s.errors + sum(1 for v in verdicts if v.get("error")),
                                 unparsed=sum(1 for v in verdicts if v.get("parse_error") and not v.get("error")))
        passes = [_passed(r, metric_names) for r in ok]
        passes = [p for p in passes if p is not None]
        s.pass_rate = sum(passes) / len(passes) if passes else None
        lat = [r.latency_s for r in ok if r.latency_s is not None]
        s.latency_p50, s.latency_p95 = percentile(lat, 50), percentile(lat, 95)
        s.prompt_tokens = sum(r.prompt_tokens or 0 for r in ok)
        s.completion_tokens = sum(r.completion_tokens or 0 for r in ok)
        costs = [r.cost for r in ok if r.cost is not None]
        s.cost = sum(costs) if costs else None
        out.append(s)
    return out


def judge_health(rows: list[ResultRow], config: dict[str, Any] | None = None) -> list[JudgeHealth]:
    """Per judge: verdicts, parse failures and failed calls over the whole run
    (a pairwise verdict is counted once, on the first variant of its pair)."""
    thresholds = {j["id"]: j.get("max_parse_failure_rate", DEFAULT_MAX_PARSE_FAILURE_RATE)
                  for j in (config or {}).get("judges", [])}
    counts: dict[str, list[int]] = {}
    for r in rows:
        for j, v in r.judges.items():
            if v.get("pair") and v["pair"][0] != r.variant:
                continue
            c = counts.setdefault(j, [0, 0, 0])
            c[0] += 1
            c[1] += bool(v.get("parse_error")) and not v.get("error")
            c[2] += bool(v.get("error"))
    return [JudgeHealth(j, n, unparsed, errors, thresholds.get(j, DEFAULT_MAX_PARSE_FAILURE_RATE))
            for j, (n, unparsed, errors) in sorted(counts.items())]


def metric_names_of(config: dict[str, Any]) -> dict[str, str]:
    """metric id -> metric name, from a run's stored config."""
    out = {}
    for m in config.get("metrics", []):
        if isinstance(m, str):
            out[m] = m
        else:
            out[m.get("id") or m["name"]] = m["name"]
    return out


def _passed(r: ResultRow, metric_names: dict[str, str]) -> bool | None:
    """All pass/fail checks on the row pass: binary metrics and rubric thresholds."""
    checks = [v == 1.0 for m, v in r.scores.items() if is_binary(metric_names.get(m, m)) and v is not None]
    checks += [j["passed"] for j in r.judges.values() if j.get("passed") is not None]
    return all(checks) if checks else None
