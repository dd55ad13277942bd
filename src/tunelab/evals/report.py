"""`tunelab report RUN_ID... -o report.html`: one self-contained HTML file (plots
are base64 PNGs, no external assets) comparing the variants of one or more runs.
Every string that came from a model, a dataset or a config is HTML-escaped."""

from __future__ import annotations

import base64
import html
import io
import time
from typing import Any

from tunelab.evals.store import ResultRow, Store
from tunelab.evals.summary import VariantSummary, summarize

MAX_SAMPLES = 100      # output rows shown per run
MAX_CHARS = 600        # per output cell


def build_report(store: Store, run_ids: list[str]) -> str:
    runs = {r.id: r for r in store.runs()}
    resolved = [store.resolve_run(r) for r in run_ids]
    label = (lambda rid, v: v) if len(resolved) == 1 else (lambda rid, v: f"{rid[-6:]}:{v}")
    summaries: list[tuple[str, VariantSummary]] = []
    all_rows: dict[str, list[ResultRow]] = {}
    for rid in resolved:
        rows = store.results(rid)
        all_rows[rid] = rows
        names = {m.get("id", m.get("name")): m.get("name") for m in _metric_cfgs(store.run_config(rid))}
        for s in summarize(rows, names):
            summaries.append((label(rid, s.variant), s))

    parts = [f"<h1>tunelab evaluation report</h1><p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M'))}</p>"]
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>description</th><th>status</th><th>outputs</th>"
                 "<th>errors</th></tr>")
    for rid in resolved:
        info = runs[rid]
        parts.append(f"<tr><td>{_e(rid)}</td><td>{_e(info.description)}</td><td>{_e(info.status)}</td>"
                     f"<td>{info.n_outputs}</td><td>{info.n_errors}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Summary</h2>" + _summary_table(summaries))
    if summaries:
        parts.append("<h2>Metrics (mean, 95% CI)</h2>" + _img(_bars(summaries)))
        dist = _distributions(all_rows, label)
        if dist:
            parts.append("<h2>Score distributions</h2>" + _img(dist))
        cq = _cost_quality(summaries)
        if cq:
            parts.append("<h2>Cost vs quality</h2>" + _img(cq))
    for rid, rows in all_rows.items():
        parts.append(f"<h2>Outputs: {_e(rid)}</h2>" + _samples(rows))
    return _PAGE.replace("{body}", "\n".join(parts))


def _summary_table(summaries: list[tuple[str, VariantSummary]]) -> str:
    metric_ids = sorted({m for _, s in summaries for m in s.metrics})
    judge_ids = sorted({j for _, s in summaries for j in s.judges})
    head = "".join(f"<th>{_e(m)}</th>" for m in metric_ids) + "".join(f"<th>judge {_e(j)}</th>" for j in judge_ids)
    out = [f"<table><tr><th>variant</th><th>n</th><th>errors</th>{head}<th>pass rate</th><th>p50 latency</th>"
           "<th>p95 latency</th><th>tokens in/out</th><th>cost</th></tr>"]
    for name, s in summaries:
        cells = [_ci(s.metrics.get(m)) for m in metric_ids] + [_ci(s.judges.get(j)) for j in judge_ids]
        out.append(f"<tr><td>{_e(name)}</td><td>{s.n}</td><td>{s.errors}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                   + f"<td>{_pct(s.pass_rate)}</td><td>{_sec(s.latency_p50)}</td><td>{_sec(s.latency_p95)}</td>"
                   f"<td>{s.prompt_tokens}/{s.completion_tokens}</td><td>{_money(s.cost)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _samples(rows: list[ResultRow]) -> str:
    out = ["<table><tr><th>item</th><th>variant</th><th>rep</th><th>input</th><th>output</th><th>scores</th>"
           "<th>judges</th></tr>"]
    for r in rows[:MAX_SAMPLES]:
        prompt = r.rendered[-1]["content"] if r.rendered else ""
        output = r.output if r.error is None else f"ERROR: {r.error}"
        scores = ", ".join(f"{k}={v:.3g}" for k, v in r.scores.items() if v is not None)
        judges = ", ".join(f"{k}={v.get('score') if v.get('score') is not None else v.get('parse_error')}"
                           for k, v in r.judges.items())
        out.append(f"<tr><td>{_e(r.item_id)}</td><td>{_e(r.variant)}</td><td>{r.repeat}</td>"
                   f"<td><pre>{_e(_clip(prompt))}</pre></td><td><pre>{_e(_clip(output or ''))}</pre></td>"
                   f"<td>{_e(scores)}</td><td>{_e(judges)}</td></tr>")
    out.append("</table>")
    if len(rows) > MAX_SAMPLES:
        out.append(f"<p>{len(rows) - MAX_SAMPLES} more rows: <code>tunelab results RUN_ID --format csv</code></p>")
    return "".join(out)


# ---- plots -----------------------------------------------------------------

def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _bars(summaries: list[tuple[str, VariantSummary]]) -> bytes:
    plt = _plt()
    series = sorted({m for _, s in summaries for m in s.metrics} | {f"judge:{j}" for _, s in summaries for j in s.judges})
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(max(4, 3.2 * len(series)), 3.6), squeeze=False)
    for ax, m in zip(axes[0], series):
        names, means, errs = [], [], [[], []]
        for name, s in summaries:
            e = s.judges.get(m[6:]) if m.startswith("judge:") else s.metrics.get(m)
            if e is None:
                continue
            names.append(name)
            means.append(e.mean)
            errs[0].append(e.mean - e.low)
            errs[1].append(e.high - e.mean)
        ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="#4c78a8")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(m, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _distributions(all_rows: dict[str, list[ResultRow]], label: Any) -> bytes | None:
    plt = _plt()
    values: dict[str, dict[str, list[float]]] = {}
    for rid, rows in all_rows.items():
        for r in rows:
            for m, v in list(r.scores.items()) + [(f"judge:{j}", d.get("score")) for j, d in r.judges.items()]:
                if v is not None:
                    values.setdefault(m, {}).setdefault(label(rid, r.variant), []).append(v)
    if not values:
        return None
    fig, axes = plt.subplots(1, len(values), figsize=(max(4, 3.2 * len(values)), 3.2), squeeze=False)
    for ax, (m, by_variant) in zip(axes[0], sorted(values.items())):
        for name, vs in by_variant.items():
            ax.hist(vs, bins=min(20, max(3, len(set(vs)))), alpha=0.5, label=name)
        ax.set_title(m, fontsize=10)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _cost_quality(summaries: list[tuple[str, VariantSummary]]) -> bytes | None:
    """Cost per item against the first quality number available (pass rate, else a metric mean)."""
    points = []
    for name, s in summaries:
        quality = s.pass_rate
        qname = "pass rate"
        if quality is None:
            first = next((k for k in sorted(s.metrics) if k not in ("latency", "cost", "prompt_tokens",
                                                                     "completion_tokens", "length")), None)
            quality, qname = (s.metrics[first].mean if first and s.metrics[first] else None), first or ""
        if s.cost is not None and quality is not None and s.n:
            points.append((name, s.cost / s.n, quality, qname))
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, c, q, _ in points:
        ax.scatter([c], [q])
        ax.annotate(name, (c, q), fontsize=8)
    ax.set_xlabel("cost per item ($)")
    ax.set_ylabel(points[0][3])
    fig.tight_layout()
    return _png(fig)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _img(png: bytes) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# ---- formatting --------------------------------------------------------------

def _metric_cfgs(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [m if isinstance(m, dict) else {"name": m} for m in config.get("metrics", [])]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " ..."


def _ci(e: Any) -> str:
    return "" if e is None else f"{e.mean:.3g} [{e.low:.3g}, {e.high:.3g}]"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _sec(x: float | None) -> str:
    return "" if x is None else f"{1000 * x:.0f} ms"


def _money(x: float | None) -> str:
    return "" if x is None else f"${x:.4f}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab evaluation report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
pre{white-space:pre-wrap;margin:0;max-width:420px}
img{max-width:100%}
</style></head><body>
{body}
</body></html>
"""
