"""The agreement report three ways: a rich table for people, JSON for machines,
and a self-contained HTML page with plots (everything user-supplied escaped)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from rich.console import Console
from rich.table import Table

from tunelab.review.agreement import PREF_NAME, _human_mean, _majority

_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"]))


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
            a = Table(title=f"{dim}: automated vs human")
            for col in ("metric", "kind", "n", "agreement with humans", "human–human ceiling", "verdict"):
                a.add_column(col, overflow="fold")
            for metric, m in r["automated"].items():
                key = "spearman" if m["kind"] == "score" else "cohen_kappa"
                a.add_row(metric, m["kind"], str(m["n_items"]), f"{key} {fmt(m[key])}",
                          fmt(m["human_ceiling"][key]), m["verdict"].split(" (")[0])
            console.print(a)


def write_html(report: dict, path: str | Path, dims: dict | None = None, scores: dict | None = None) -> None:
    """`dims` / `scores` (from `plot_data`) add the scatter and confusion-matrix plots."""
    plots = _plots(dims or {}, scores or {})
    html = _ENV.get_template("agreement.html").render(report=report, fmt=fmt, plots=plots)
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
