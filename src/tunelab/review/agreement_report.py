"""The agreement report three ways: a rich table for people, JSON for machines,
and a self-contained HTML page with plots (everything user-supplied escaped)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.review.agreement import PREF_NAME, _human_mean, _majority
from tunelab.review.levels import STATS, short_verdict
from tunelab.review.levels import fmt as fmt_ci
from tunelab.review.render import TEMPLATES

# One line per statistic the inter-rater report names, shown under its tables and in the HTML.
INTER_RATER_EXPLAIN = {
    "percent agreement": "percent agreement: share of rater pairs giving an item the same score (no chance correction).",
    "Cohen's kappa": "Cohen's kappa: two raters' agreement beyond chance: 1 = perfect, 0 = chance, < 0 = worse than "
                     "chance; linear/quadratic weights count near misses as partial agreement.",
    "Fleiss' kappa": "Fleiss' kappa: Cohen's idea for many raters — agreement beyond chance across all raters of an item.",
    "Krippendorff's alpha": "Krippendorff's alpha: agreement beyond chance that tolerates missing ratings; the level "
                            "says whether scores are categories (nominal), ordered (ordinal) or numbers (interval).",
    "correlations": "spearman / kendall / pearson: rank, pair-order and linear correlation of a metric with the human mean.",
    "accuracy": "accuracy: share of items where the automated verdict equals the human one.",
    "ceiling": "human–human ceiling: the same figure between one rater and the others — what a human achieves.",
    "ci": "95% CI: bootstrap interval over items; a figure whose interval includes 0 may be chance.",
}


def fmt(fig) -> str:
    """A figure as `0.71 [0.55, 0.83]`; numbers pass through."""
    if fig is None:
        return "–"
    if isinstance(fig, (int, float)):
        return f"{fig:.3g}" if isinstance(fig, float) else str(fig)
    if fig.get("value") is None:
        return "–"
    if fig.get("ci_low") is None:
        return f"{fig['value']:.2f}"
    return f"{fig['value']:.2f} [{fig['ci_low']:.2f}, {fig['ci_high']:.2f}]"


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)


def print_tables(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    for dim, r in report.items():
        t = Table(title=f"{dim}: {r['n_items']} items, {r['n_raters']} raters (95% bootstrap CI)")
        t.add_column("figure")
        t.add_column("value [95% CI]")
        t.add_row("percent agreement", fmt(r["percent_agreement"]))
        t.add_row("Fleiss' kappa", fmt(r["fleiss_kappa"]))
        for level, f in r["krippendorff_alpha"].items():
            t.add_row(f"Krippendorff's alpha ({level})", fmt(f))
        for pair, ks in r["cohen_kappa"].items():
            t.add_row(f"Cohen's kappa {pair}", "  ".join(f"{w}: {fmt(f)}" for w, f in ks.items()))
        console.print(t)
        if r["automated"]:
            a = Table(title=f"{dim}: automated vs human, item level")
            for col in ("metric", "kind", "n", "agreement with humans", "human–human ceiling", "verdict"):
                a.add_column(col, overflow="fold")
            for metric, m in r["automated"].items():
                key = "spearman" if m["kind"] == "score" else "cohen_kappa"
                a.add_row(metric, m["kind"], str(m["n_items"]), f"{key} {fmt(m[key])}",
                          fmt(m["human_ceiling"][key]), m["verdict"].split(" (")[0])
            console.print(a)
    if report:
        console.print(_footnote(INTER_RATER_EXPLAIN))


def print_levels(report: dict, console: Console | None = None) -> None:
    """The imported-judgments report: one table per dimension and metric, a row per level, statistics explained."""
    console = console or Console()
    d = report["design"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in report["correlations"]:
        groups.setdefault((row["dimension"], row["metric"]), []).append(row)
    console.print(f"{d['items']} rated outputs, {d['inputs']} inputs × {d['systems']} systems; "
                  f"{d['n_boot']} bootstrap resamples of inputs{' and systems' if d['system_resampling'] else ''}")
    for (dim, metric), rows in groups.items():
        info = report["dimensions"][dim]
        t = Table(title=f"{dim} ({info['n_raters']} rater(s)) vs {metric_label(report, metric, dim)}",
                  title_justify="left")
        for col in ("level", "n", "Pearson r", "Spearman ρ", "Kendall τ-b", "skipped", "human–human ρ", "verdict"):
            t.add_column(col, overflow="fold")
        for r in rows:
            ceil = r["human_ceiling"]
            t.add_row(r["level"], str(r["n"]), *(fmt_ci(r[s], r["ci"][s]).replace(" [", "\n[") for s in STATS),
                      "" if r["skipped_inputs"] is None else str(r["skipped_inputs"]),
                      "–" if ceil is None else fmt_ci(ceil["value"], ceil["ci"]).replace(" [", "\n["),
                      short_verdict(r["verdict"]))
        console.print(t)
    console.print(_footnote(report["explanations"]))


def metric_label(report: dict, metric: str, dimension: str | None = None) -> str:
    """`rouge_l (refs: mean)` for reference-based metrics, `geval (360 × logprobs)` for G-Eval."""
    notes = report.get("metrics", {}).get(metric, {})
    if notes.get("multi_reference"):
        return f"{metric} (refs: {notes['multi_reference']})"
    method = notes.get("method", {}).get(dimension)
    return f"{metric} ({method})" if method else metric


def write_levels_html(report: dict, path: str | Path) -> None:
    html = TEMPLATES.get_template("validation.html").render(report=report, fmt=fmt_ci, stats=STATS,
                                                       label=lambda m, d=None: metric_label(report, m, d))
    Path(path).write_text(html, encoding="utf-8")


def _footnote(explain: dict) -> str:
    from rich.markup import escape

    return "\n".join(f"[dim]{escape(text)}[/dim]" for text in explain.values())


def write_html(report: dict, path: str | Path, dims: dict | None = None, scores: dict | None = None) -> None:
    """`dims` / `scores` (from `plot_data`) add the scatter and confusion-matrix plots."""
    plots = _plots(dims or {}, scores or {})
    html = TEMPLATES.get_template("agreement.html").render(report=report, fmt=fmt, plots=plots,
                                                      explanations=INTER_RATER_EXPLAIN)
    Path(path).write_text(html, encoding="utf-8")


def _plots(dims: dict, scores: dict) -> dict:
    """{dimension: [(title, base64 PNG)]}: metric vs human mean per metric, judge confusion matrices."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import confusion_matrix

    out: dict[str, list] = {}
    for name, dim in dims.items():
        for metric, x in scores.get(name, {}).items():
            kind, x = x
            fig, ax = plt.subplots(figsize=(4, 3.2), dpi=90)
            if kind == "pairwise":
                h = _majority(dim.m)
                ok = ~np.isnan(x) & ~np.isnan(h)
                labels = sorted(PREF_NAME)
                cm = confusion_matrix(h[ok], x[ok], labels=labels)
                ax.imshow(cm, cmap="Blues")
                names = [PREF_NAME[v] for v in labels]
                ax.set_xticks(range(3), names)
                ax.set_yticks(range(3), names)
                for (i, j), c in np.ndenumerate(cm):
                    ax.text(j, i, str(c), ha="center", va="center")
                ax.set_xlabel(f"{metric} verdict")
                ax.set_ylabel("human majority")
                title = f"{metric}: preference confusion matrix"
            else:
                h = _human_mean(dim.m)
                ok = ~np.isnan(x) & ~np.isnan(h)
                ax.scatter(x[ok], h[ok], alpha=0.7)
                ax.set_xlabel(metric)
                ax.set_ylabel(f"human mean {name}")
                title = f"{metric} vs human mean"
            ax.set_title(title, fontsize=9)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            plt.close(fig)
            out.setdefault(name, []).append((title, base64.b64encode(buf.getvalue()).decode()))
    return out
