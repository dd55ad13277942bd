"""`tunelab report RUN_ID... -o report.html`: one self-contained HTML file (plots
are base64 PNGs, the filter is a few lines of plain JavaScript, no external
assets) to compare variants and to debug them: the summary with missing-value
counts beside each figure, flagged judges, plots that stay readable with many
variants, and a per-item grid (input, expected, every variant's output, scores and
judge reasoning) filterable to disagreements and failures. Every string that came
from a model, a dataset or a config is HTML-escaped; every empty panel says why."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from typing import Any

from tunelab.evals.metrics import is_call_metric
from tunelab.evals.selection import RunNames, select_rows
from tunelab.evals.store import ResultRow, Store
from tunelab.evals.summary import Figure, JudgeHealth, VariantSummary, judge_health, metric_names_of, summarize

MAX_ITEMS = 500        # grid rows per run (items × repeats)
MAX_CHARS = 1200       # per output cell


def build_report(store: Store, run_ids: list[str], *, variants: list[str] | None = None,
                 metrics: list[str] | None = None) -> str:
    runs = {r.id: r for r in store.runs()}
    resolved = [store.resolve_run(r) for r in run_ids]
    label = (lambda rid, v: v) if len(resolved) == 1 else (lambda rid, v: f"{rid[-6:]}:{v}")
    summaries: list[tuple[str, VariantSummary]] = []
    all_rows: dict[str, list[ResultRow]] = {}
    health: list[tuple[str, JudgeHealth]] = []
    for rid in resolved:
        config = store.run_config(rid)
        rows = store.results(rid)
        rows = select_rows(rows, RunNames.of(rows, config, f"run {rid}"), variants, metrics)
        all_rows[rid] = rows
        summaries += [(label(rid, s.variant), s) for s in summarize(rows, metric_names_of(config))]
        health += [(rid, h) for h in judge_health(rows, config)]

    parts = [f"<h1>tunelab evaluation report</h1><p>Generated {_e(time.strftime('%Y-%m-%d %H:%M'))}. "
             "Figures are means with 95% intervals (Wilson for pass/fail values, the percentile bootstrap "
             "otherwise); "
             "<b>err</b> counts outputs with no value because a call failed, <b>unparsed</b> judge replies "
             "that could not be read.</p>"]
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>description</th><th>status</th><th>outputs</th>"
                 "<th>errors</th><th>verdicts</th><th>unparsed verdicts</th></tr>")
    for rid in resolved:
        info = runs[rid]
        parts.append(f"<tr><td>{_e(rid)}</td><td>{_e(info.description)}</td><td>{_e(info.status)}</td>"
                     f"<td>{info.n_outputs}</td><td>{info.n_errors}</td><td>{info.n_verdicts}</td>"
                     f"<td>{info.n_parse_failures}</td></tr>")
    parts.append("</table>")
    for rid, h in health:
        if h.flagged:
            parts.append(f'<div class="alarm" role="alert"><b>Judge {_e(h.judge_id)} is unreliable in run '
                         f"{_e(rid)}:</b> {_e(h.warning())}</div>")
    parts.append("<h2>Summary</h2>" + _summary_table(summaries))
    parts.append(_plots(summaries, all_rows, label))
    for rid, rows in all_rows.items():
        parts.append(f"<h2>Items: {_e(rid)}</h2>" + _grid(rid, rows))
    return _PAGE.replace("{body}", "\n".join(parts)).replace("{script}", _SCRIPT)


def _summary_table(summaries: list[tuple[str, VariantSummary]]) -> str:
    if not summaries:
        return '<p class="empty">No outputs: the run recorded none (it may have been interrupted before its first call).</p>'
    metric_ids = sorted({m for _, s in summaries for m in s.metrics})
    judge_ids = sorted({j for _, s in summaries for j in s.judges})
    head = "".join(f"<th>{_e(m)}</th>" for m in metric_ids) + "".join(f"<th>judge {_e(j)}</th>" for j in judge_ids)
    out = [f"<table><tr><th>variant</th><th>n</th><th>errors</th>{head}<th>pass rate</th><th>p50 latency</th>"
           "<th>p95 latency</th><th>tokens in/out</th><th>cost</th></tr>"]
    for name, s in summaries:
        cells = [_fig(s.metrics.get(m)) for m in metric_ids] + [_fig(s.judges.get(j)) for j in judge_ids]
        out.append(f"<tr><td>{_e(name)}</td><td>{s.n}</td><td>{s.errors}</td>" + "".join(cells)
                   + f"<td>{_pct(s.pass_rate)}</td><td>{_sec(s.latency_p50)}</td><td>{_sec(s.latency_p95)}</td>"
                   f"<td>{s.prompt_tokens}/{s.completion_tokens}</td><td>{_money(s.cost)}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _fig(f: Figure | None) -> str:
    if f is None:
        return '<td class="na" title="not measured for this variant">-</td>'
    warn = ' class="warn"' if f.errors or f.unparsed or f.estimate is None else ""
    return f"<td{warn}>{_e(f.text())}</td>"


# ---- the per-item grid -------------------------------------------------------

def _grid(rid: str, rows: list[ResultRow]) -> str:
    if not rows:
        return '<p class="empty">No items to show: no output matched (check --variant).</p>'
    variants = sorted({r.variant for r in rows})
    by_item: dict[tuple[str, int], dict[str, ResultRow]] = {}
    for r in rows:
        by_item.setdefault((r.item_id, r.repeat), {})[r.variant] = r
    keys = list(by_item)[:MAX_ITEMS]
    gid = f"g{abs(hash(rid)) % 10**8}"
    out = [f'<div class="filters" data-grid="{gid}">Show <select class="mode">'
           '<option value="all">all items</option>'
           '<option value="disagree">items where variants disagree</option>'
           '<option value="fail">items with a failure (error, unparsed verdict or failed check)</option>'
           '<option value="error">items with an error or unparsed verdict</option></select> '
           '<input class="search" type="search" placeholder="search text"> <span class="count"></span></div>',
           f'<div class="scroll"><table class="grid" id="{gid}"><thead><tr><th>item</th><th>input</th>'
           '<th>expected</th>' + "".join(f"<th>{_e(v)}</th>" for v in variants) + "</tr></thead><tbody>"]
    for key in keys:
        cells = by_item[key]
        first = next(iter(cells.values()))
        disagree, fail, error = _flags(cells.values())
        inputs = "\n".join(f"{k}: {_short(v)}" for k, v in first.vars.items() if k != "reference")
        item = key[0] + (f" #{key[1]}" if key[1] else "")
        out.append(f'<tr data-disagree="{int(disagree)}" data-fail="{int(fail)}" data-error="{int(error)}">'
                   f"<td>{_e(item)}</td><td><pre>{_e(_clip(inputs))}</pre></td>"
                   f"<td><pre>{_e('' if first.reference is None else _short(first.reference))}</pre></td>"
                   + "".join(_cell(cells.get(v)) for v in variants) + "</tr>")
    out.append("</tbody></table></div>")
    if len(by_item) > MAX_ITEMS:
        out.append(f"<p>{len(by_item) - MAX_ITEMS} more items not shown: narrow with "
                   "<code>tunelab report RUN --variant PATTERN</code> or export with "
                   "<code>tunelab results RUN --format csv</code>.</p>")
    return "".join(out)


def _cell(r: ResultRow | None) -> str:
    if r is None:
        return '<td class="na">not run</td>'
    if r.error is not None:
        return f'<td class="bad"><pre>ERROR: {_e(_clip(r.error))}</pre></td>'
    chips = [_chip(m, v, _binary_fail(v)) for m, v in r.scores.items() if not is_call_metric(m)]
    details = []
    for j, v in r.judges.items():
        if v.get("error"):
            chips.append(f'<span class="chip bad">{_e(j)}: call failed</span>')
            details.append(f"<b>{_e(j)}</b>: {_e(v['error'])}")
        elif v.get("parse_error"):
            chips.append(f'<span class="chip bad">{_e(j)}: unparsed</span>')
            raw = " / ".join(v.get("raw") or [])
            details.append(f"<b>{_e(j)}</b>: {_e(v['parse_error'])}<br>raw reply: {_e(_clip(raw))}")
        else:
            chips.append(_chip(j, v.get("score"), v.get("passed") is False, v.get("winner")))
            details.append(f"<b>{_e(j)}</b>: {_e(v.get('reasoning') or '(no reasoning given)')}")
    prompt = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in r.rendered)
    details.append(f"<b>prompt sent</b><pre>{_e(_clip(prompt))}</pre>")
    return (f"<td><pre>{_e(_clip(r.output or ''))}</pre><div>{''.join(chips)}</div>"
            f"<details><summary>judge reasoning, prompt</summary>{'<br>'.join(details)}</details></td>")


def _chip(name: str, value: Any, failed: bool, winner: str | None = None) -> str:
    shown = "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
    if winner:
        shown += f" (winner {winner})"
    return f'<span class="chip{" bad" if failed else ""}">{_e(name)}={_e(shown)}</span>'


def _flags(cells: Any) -> tuple[bool, bool, bool]:
    """(variants disagree on a pass/fail value, some failure, some error or unparsed verdict)."""
    cells = list(cells)
    error = any(r.error is not None or any(v.get("parse_error") or v.get("error") for v in r.judges.values())
                for r in cells)
    fail = error or any(any(_binary_fail(v) for v in r.scores.values()) or
                        any(v.get("passed") is False for v in r.judges.values()) for r in cells)
    values: dict[str, set[Any]] = {}
    for r in cells:
        if r.error is not None:
            continue
        for m, v in r.scores.items():
            if v in (0.0, 1.0):
                values.setdefault(m, set()).add(v)
        for j, v in r.judges.items():
            if v.get("passed") is not None:
                values.setdefault(j, set()).add(v["passed"])
            elif v.get("score") is not None and v.get("kind") != "pairwise":
                values.setdefault(j, set()).add(v["score"])
    return any(len(vs) > 1 for vs in values.values()), fail, error


def _binary_fail(v: Any) -> bool:
    return v == 0.0


# ---- plots -------------------------------------------------------------------

def _plots(summaries: list[tuple[str, VariantSummary]], all_rows: dict[str, list[ResultRow]], label: Any) -> str:
    if not summaries:
        return '<h2>Plots</h2><p class="empty">No plots: there are no outputs.</p>'
    binary: dict[str, list[tuple[str, Figure]]] = {}
    continuous: dict[str, list[tuple[str, Figure]]] = {}
    for name, s in summaries:
        for m, f in [*s.metrics.items(), *((f"judge:{j}", f) for j, f in s.judges.items())]:
            if f.estimate is None:
                continue
            (binary if f.estimate.method == "wilson" else continuous).setdefault(m, []).append((name, f))
    parts = ["<h2>Pass/fail metrics (share passing, Wilson 95% CI)</h2>"]
    parts.append(_img(_bars(binary, "share passing", (0, 1))) if binary else
                 '<p class="empty">No pass/fail metric in this run (exact_match, contains, regex, json_valid, '
                 "json_schema or a python metric returning true/false).</p>")
    parts.append("<h2>Scores (mean, bootstrap 95% CI)</h2>")
    parts.append(_img(_bars(continuous, "mean", None)) if continuous else
                 '<p class="empty">No continuous metric or judge score has a value in this run'
                 + (" (every judge reply was unparseable or failed: see the warning above)" if any(
                     s.judges for _, s in summaries) else "") + ".</p>")
    parts.append("<h2>Distributions of continuous scores</h2>")
    dist = _distributions(all_rows, label, set(continuous))
    parts.append(_img(dist) if dist else '<p class="empty">Nothing to draw: pass/fail values are shown as bars '
                 "above, and no continuous score has values.</p>")
    parts.append("<h2>Cost vs quality</h2>")
    cq, why = _cost_quality(summaries)
    parts.append(_img(cq) if cq else f'<p class="empty">{_e(why)}</p>')
    return "".join(parts)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _bars(series: dict[str, list[tuple[str, Figure]]], xlabel: str, xlim: tuple[float, float] | None) -> bytes:
    """One panel per metric, variants on the y axis: horizontal bars keep long names readable at 12+ variants."""
    plt = _plt()
    n_variants = max(len(v) for v in series.values())
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols + 1.5, rows * (0.9 + 0.32 * n_variants)), squeeze=False)
    for ax, (m, items) in zip(axes.flat, sorted(series.items())):
        names = [n for n, _ in items]
        means = [f.estimate.mean for _, f in items]
        errs = [[f.estimate.mean - f.estimate.low for _, f in items], [f.estimate.high - f.estimate.mean for _, f in items]]
        y = range(len(names))
        ax.barh(y, means, xerr=errs, capsize=3, color="#4c78a8")
        ax.set_yticks(list(y), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(m, fontsize=10)
        ax.set_xlabel(f"{xlabel} (95% CI)", fontsize=8)
        if xlim:
            ax.set_xlim(*xlim)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _distributions(all_rows: dict[str, list[ResultRow]], label: Any, measures: set[str]) -> bytes | None:
    """Box plots per variant for continuous measures (overlapping histograms become unreadable past a few variants)."""
    values: dict[str, dict[str, list[float]]] = {}
    for rid, rows in all_rows.items():
        for r in rows:
            pairs = list(r.scores.items()) + [(f"judge:{j}", d.get("score")) for j, d in r.judges.items()]
            for m, v in pairs:
                if v is not None and m in measures:
                    values.setdefault(m, {}).setdefault(label(rid, r.variant), []).append(v)
    if not values:
        return None
    plt = _plt()
    n_variants = max(len(v) for v in values.values())
    cols = min(3, len(values))
    rows_n = -(-len(values) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.8 * cols + 1.5, rows_n * (0.9 + 0.32 * n_variants)),
                             squeeze=False)
    for ax, (m, by_variant) in zip(axes.flat, sorted(values.items())):
        names = sorted(by_variant)
        ax.boxplot([by_variant[n] for n in names], orientation="horizontal", tick_labels=names)
        ax.tick_params(axis="y", labelsize=8)
        ax.invert_yaxis()
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("value per output", fontsize=8)
    for ax in list(axes.flat)[len(values):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _cost_quality(summaries: list[tuple[str, VariantSummary]]) -> tuple[bytes | None, str]:
    """Cost per item against the first quality number available (pass rate, else a metric mean)."""
    points = []
    for name, s in summaries:
        quality, qname = s.pass_rate, "pass rate"
        if quality is None:
            first = next((k for k in sorted(s.metrics) if not is_call_metric(k) and k != "length"), None)
            est = s.metrics[first].estimate if first else None
            quality, qname = (est.mean if est else None), first or ""
        if s.cost is not None and quality is not None and s.n:
            points.append((name, s.cost / s.n, quality, qname))
    if not points:
        if all(s.cost is None for _, s in summaries):
            return None, "No cost-vs-quality plot: no variant has a cost (give its provider a price: in the config)."
        return None, "No cost-vs-quality plot: no variant with a cost has a quality figure (a pass/fail metric)."
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c, q, _ in points:
        ax.scatter([c], [q])
        ax.annotate(name, (c, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("cost per item ($)")
    ax.set_ylabel(points[0][3])
    fig.tight_layout()
    return _png(fig), ""


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def _img(png: bytes) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


# ---- formatting --------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + " ..."


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _sec(x: float | None) -> str:
    return "" if x is None else f"{1000 * x:.0f} ms"


def _money(x: float | None) -> str:
    return "" if x is None else f"${x:.4f}"


# Filters the grid by the data-* flags computed in Python; it never reads or writes markup.
_SCRIPT = """
for (const bar of document.querySelectorAll('.filters')) {
  const grid = document.getElementById(bar.dataset.grid);
  const mode = bar.querySelector('.mode'), search = bar.querySelector('.search'), count = bar.querySelector('.count');
  const apply = () => {
    const m = mode.value, q = search.value.toLowerCase();
    let shown = 0;
    for (const tr of grid.tBodies[0].rows) {
      const ok = (m === 'all' || tr.dataset[m] === '1') && (!q || tr.textContent.toLowerCase().includes(q));
      tr.hidden = !ok;
      shown += ok;
    }
    count.textContent = shown + ' of ' + grid.tBodies[0].rows.length + ' items';
  };
  mode.addEventListener('change', apply);
  search.addEventListener('input', apply);
  apply();
}
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunelab evaluation report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
pre{white-space:pre-wrap;margin:0;max-width:420px}
img{max-width:100%}
.scroll{overflow-x:auto}
.grid td{min-width:160px}
.chip{display:inline-block;margin:2px;padding:0 5px;border-radius:8px;background:#e8f0e8;font-size:12px}
.chip.bad,td.bad{background:#fbe3e3}
td.warn{background:#fff4d6}
td.na{color:#888}
.alarm{border:2px solid #c00;background:#fbe3e3;padding:8px 12px;margin:1em 0}
.empty{color:#555;font-style:italic}
.filters{margin:8px 0}
details summary{cursor:pointer;color:#35c;font-size:12px}
</style></head><body>
{body}
<script>{script}</script>
</body></html>
"""
