"""Human judgments gathered elsewhere — a public benchmark or your own study — checked
against tunelab's metrics at item, input and system level.

ITEMS (JSONL or CSV): `id`, `input_id`, `system`, `output`, and `reference` or
`references` (a list), plus any fields a metric reads (e.g. `input`).
RATINGS (JSONL or CSV): `item_id`, `dimension`, `rater`, `score`; a rater may be an
aggregate such as "mean of 3 experts".

Every row is checked before any metric runs, so a bad row costs nothing; metric
values are cached in the same result cache `tunelab eval` uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.io.records import records
from tunelab.review.errors import ReviewError
from tunelab.review.levels import EXPLAIN, BootConfig, Design, Draws, correlate, human_ceilings
from tunelab.review.store import Rating

ITEM_FIELDS = ("id", "input_id", "system", "output")


@dataclass
class ImportedItem:
    id: str
    input_id: str
    system: str
    output: str
    references: list[str] | None
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    """Items, their ratings by dimension, and automated scores: everything a validation report reads."""

    items: list[ImportedItem]
    ratings: list[Rating]
    scores: dict[tuple[str, str | None], np.ndarray] = field(default_factory=dict)  # (metric, dimension) -> per item
    metric_notes: dict[str, dict] = field(default_factory=dict)                      # metric -> {"multi_reference"}


def load_items(path: str | Path) -> list[ImportedItem]:
    path = Path(path)
    out, seen = [], {}
    for n, obj in records(path, ReviewError, "items", required_columns=set(ITEM_FIELDS)):
        where = f"{path}:{n}"
        for key in ITEM_FIELDS:
            if obj.get(key) in (None, "") and not (key == "output" and obj.get(key) == ""):
                raise ReviewError(f"{where}: field {key!r} is missing or empty")
        if not isinstance(obj["output"], str):
            raise ReviewError(f"{where}: field 'output' must be a string, got {type(obj['output']).__name__}")
        item_id = str(obj["id"])
        if item_id in seen:
            raise ReviewError(f"{where}: field 'id': duplicate {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = n
        refs = _references(where, obj)
        extra = {k: v for k, v in obj.items() if k not in (*ITEM_FIELDS, "reference", "references")}
        out.append(ImportedItem(item_id, str(obj["input_id"]), str(obj["system"]), obj["output"], refs, extra))
    if not out:
        raise ReviewError(f"{path}: no items")
    return out


def load_ratings(path: str | Path, items: list[ImportedItem]) -> list[Rating]:
    """RATINGS rows, each naming an item of ITEMS and carrying a numeric score."""
    path = Path(path)
    known = {it.id for it in items}
    out = []
    for n, obj in records(path, ReviewError, "ratings", required_columns={"item_id", "dimension", "rater", "score"}):
        where = f"{path}:{n}"
        for key in ("item_id", "dimension", "rater", "score"):
            if obj.get(key) in (None, ""):
                raise ReviewError(f"{where}: field {key!r} is missing or empty")
        if str(obj["item_id"]) not in known:
            raise ReviewError(f"{where}: field 'item_id': {obj['item_id']!r} is not an id in the items file")
        try:
            score = float(obj["score"])
        except (TypeError, ValueError):
            raise ReviewError(f"{where}: field 'score' must be a number, got {obj['score']!r}") from None
        if not math.isfinite(score) or isinstance(obj["score"], bool):
            raise ReviewError(f"{where}: field 'score' must be a finite number, got {obj['score']!r}")
        out.append(Rating(str(obj["item_id"]), str(obj["rater"]), str(obj["dimension"]), score))
    if not out:
        raise ReviewError(f"{path}: no ratings")
    return out


def score_with_metrics(items: list[ImportedItem], names: list[str], *, multi_reference: str | None = None,
                       db: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Per-item values of tunelab metrics (NaN where a metric does not apply), cached in `db` when given."""
    from tunelab.evals.config import MetricConfig
    from tunelab.evals.errors import EvalError
    from tunelab.evals.metrics import Metric, MetricInput, check_metric, is_reference_based

    metrics = []
    for k, spec in enumerate(names):
        name, options = parse_metric(spec)
        if multi_reference and is_reference_based(name):
            options.setdefault("multi_reference", multi_reference)
        cfg = MetricConfig(name=name, id=spec, options=options)
        try:
            check_metric(cfg, where=f"--metric[{k}]")
        except EvalError as exc:
            raise ReviewError(str(exc)) from None
        metrics.append(Metric(cfg))
    inputs = [MetricInput(it.output, it.references, {**it.vars, "system": it.system, "input_id": it.input_id})
              for it in items]
    store = _cache(db)
    vectors, notes = {}, {}
    for m in metrics:
        keys = [m.input_key(x) for x in inputs]
        found = store.cache_get_results(keys) if store else {}
        todo = [i for i, key in enumerate(keys) if key not in found]
        try:
            fresh = m.score([inputs[i] for i in todo]) if todo else []
        except EvalError as exc:
            raise ReviewError(str(exc)) from None
        new = {keys[i]: v for i, v in zip(todo, fresh)}
        if store and new:
            store.cache_put_results(new)
        values = [found[k] if k in found else new[k] for k in keys]
        vectors[m.id] = np.array([np.nan if v is None else float(v) for v in values])
        notes[m.id] = {"multi_reference": m.multi_reference, "computed": len(todo), "cached": len(keys) - len(todo)}
    if store:
        store.close()
    return vectors, notes


def parse_metric(spec: str) -> tuple[str, dict[str, Any]]:
    """`rouge_l` or `rouge_l:beta=1.2,tokenize=whitespace` -> (name, options); values read as JSON when they parse."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ReviewError(f"--metric {spec!r}: expected NAME or NAME:key=value,key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return name.strip(), options


def validate(study: Study, config: BootConfig | None = None) -> dict:
    """The JSON-ready report: one row per (metric, dimension, level), explanations, and the design."""
    config = config or BootConfig()
    ids = [it.id for it in study.items]
    design = Design.build(ids, [it.input_id for it in study.items], [it.system for it in study.items])
    draws = Draws.make(design, config)
    rows, dims = [], {}
    for dim, human in human_matrices(study.ratings, ids).items():
        dims[dim] = {"n_items": int((~np.isnan(human)).any(1).sum()), "n_raters": human.shape[1]}
        ceilings = human_ceilings(design, human, draws, config)
        for (metric, only), x in study.scores.items():
            if only not in (None, dim):
                continue
            for fig in correlate(design, human, x, draws, config, metric_name=metric, dimension=dim,
                                 ceilings=ceilings):
                rows.append(fig.to_dict())
    return {"correlations": rows, "dimensions": dims,
            "design": {"items": len(ids), "inputs": len(design.inputs), "systems": len(design.systems),
                       "n_boot": config.n_boot, "seed": config.seed, "levels": list(config.levels),
                       "system_resampling": draws.systems is not None},
            "metrics": study.metric_notes, "explanations": EXPLAIN}


def human_matrices(ratings: list[Rating], item_ids: list[str]) -> dict[str, np.ndarray]:
    """{dimension: items × raters} aligned with `item_ids`, NaN where a rater did not rate an item."""
    index = {x: k for k, x in enumerate(item_ids)}
    by_dim: dict[str, list[Rating]] = {}
    for r in ratings:
        by_dim.setdefault(r.dimension, []).append(r)
    out = {}
    for dim, rows in by_dim.items():
        raters = sorted({r.rater for r in rows})
        rr = {x: k for k, x in enumerate(raters)}
        m = np.full((len(item_ids), len(raters)), np.nan)
        for r in rows:
            m[index[r.item_id], rr[r.rater]] = r.score
        out[dim] = m
    return out


def scores_from_file(auto: list, item_ids: list[str]) -> dict[tuple[str, str | None], np.ndarray]:
    """`--scores` rows (item_id, metric, value[, dimension]) as per-item vectors."""
    index = {x: k for k, x in enumerate(item_ids)}
    out: dict[tuple[str, str | None], np.ndarray] = {}
    for s in auto:
        if s.kind not in (None, "score") or isinstance(s.value, (bool, str)):
            raise ReviewError(f"--scores: metric {s.metric!r}, item {s.item_id!r}: imported judgments are "
                              "correlated with numeric scores only")
        if s.item_id not in index:
            raise ReviewError(f"--scores: item_id {s.item_id!r} is not an id in the items file")
        vec = out.setdefault((s.metric, s.dimension), np.full(len(item_ids), np.nan))
        vec[index[s.item_id]] = float(s.value)
    return out


def _references(where: str, obj: dict) -> list[str] | None:
    refs = obj.get("references", obj.get("reference"))
    if refs in (None, ""):
        return None
    if isinstance(refs, str) and "references" in obj:
        try:  # CSV cells carry a JSON list
            refs = json.loads(refs)
        except json.JSONDecodeError:
            raise ReviewError(f"{where}: field 'references' must be a JSON list of strings") from None
    if isinstance(refs, str):
        return [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise ReviewError(f"{where}: field 'references' must be a non-empty list of strings")
    return refs


def _cache(db: str | Path | None):
    if db is None:
        return None
    from tunelab.evals.store import Store

    return Store(db)



def validate_files(items_path, ratings_path, metric_names: list[str], scores_path=None,
                   config: BootConfig | None = None, *, references: str | None = None, db=None,
                   judge: tuple[str, str, str] | None = None) -> dict:
    """`tunelab agree --items --ratings`: read and check every file first, then score, then correlate.
    `judge` (base_url, model, api_key) adds a G-Eval and a plain rubric judge per dimension."""
    from tunelab.review.longformat import load_scores

    if references not in (None, "mean", "max"):
        raise ReviewError(f"--references: expected mean or max, got {references!r}")
    items = load_items(items_path)
    ratings = load_ratings(ratings_path, items)
    ids = [it.id for it in items]
    scores = scores_from_file(load_scores(scores_path), ids) if scores_path is not None else {}
    if not metric_names and not scores and judge is None:
        raise ReviewError("nothing to validate: give --metric NAME (repeatable), --scores FILE or --judge-url")
    vectors, notes = score_with_metrics(items, metric_names, multi_reference=references, db=db)
    for name, vec in vectors.items():
        scores[(name, None)] = vec
    if judge is not None:
        scores_j, notes_j = judge_study(items, ratings, judge, db)
        scores.update(scores_j)
        notes.update(notes_j)
    return validate(Study(items, ratings, scores, notes), config)


def judge_study(items: list[ImportedItem], ratings: list[Rating], judge: tuple[str, str, str], db=None):
    """G-Eval and rubric-judge vectors per rated dimension, on each dimension's observed integer scale."""
    from tunelab.review.judging import judge_vectors

    scales: dict[str, tuple[int, int]] = {}
    for r in ratings:
        lo, hi = scales.get(r.dimension, (math.inf, -math.inf))
        scales[r.dimension] = (min(lo, r.score), max(hi, r.score))
    scales = {d: (math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)) for d, (lo, hi) in scales.items()}
    base_url, model, api_key = judge
    return judge_vectors(items, scales, base_url, model, api_key=api_key, db=db)


def validate_review_task(items: list, ratings: list[Rating], auto: list, config: BootConfig | None = None) -> dict | None:
    """The three levels for a review task built from an eval run: input = dataset row, system = variant.
    None when there is nothing to correlate (pairwise task, no numeric automated scores)."""
    from tunelab.review.runs import SEP

    rated = [ImportedItem(it.item_id, it.item_id.split(SEP)[0], it.variant_a or "-", it.output_a, None)
             for it in items if it.output_b is None]
    ids = {it.id for it in rated}
    numeric = [s for s in auto if s.kind in (None, "score") and not isinstance(s.value, (bool, str))
               and s.item_id in ids]
    ratings = [r for r in ratings if r.score is not None and r.item_id in ids]
    if not rated or not numeric or not ratings:
        return None
    return validate(Study(rated, ratings, scores_from_file(numeric, [it.id for it in rated])), config)
