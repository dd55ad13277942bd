"""What the task owner sees: progress per rater and per item, time per item, live agreement,
flags, and each rater's calibration (accuracy on gold items, bias against the others).

Agreement here is the point estimate from `review.agreement` (no bootstrap, so the page
stays instant); `tunelab agree TASK` gives the intervals.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from tunelab.review.agreement import AgreementConfig, agreement
from tunelab.review.errors import ReviewError
from tunelab.review.store import FLAG_REASONS, ReviewStore
from tunelab.review.tasks import progress


def dashboard(store: ReviewStore, name: str) -> dict:
    task = store.task(name)
    items = store.items(name)
    ratings = store.ratings(name)
    times = store.seconds_per_item(name)
    by_rater_t, by_item_t = defaultdict(list), defaultdict(list)
    for r in times:
        by_rater_t[r["rater"]].append(r["seconds"])
        by_item_t[r["item_id"]].append(r["seconds"])
    calib = calibration(store, name)
    raters = progress(store, name)
    for p in raters:
        p["median_s"] = _median(by_rater_t.get(p["rater"]))
        p.update(calib.get(p["rater"], {"gold_n": 0, "gold_accuracy": None, "bias": None}))
    assigned, rated = defaultdict(list), defaultdict(set)
    for i, r in store.assignments(name):
        assigned[i].append(r)
    for r in ratings:
        rated[r.item_id].add(r.rater)
    flags = store.flags(name)
    flagged = defaultdict(int)
    for f in flags:
        flagged[f["item_id"]] += 1
    per_item = [{"item_id": it.item_id, "gold": it.gold is not None, "raters": len(assigned[it.item_id]),
                 "rated": len(rated[it.item_id]), "flags": flagged[it.item_id],
                 "median_s": _median(by_item_t.get(it.item_id))} for it in items]
    return {
        "task": task, "items": per_item, "raters": raters, "agreement": live_agreement(task, ratings),
        "flags": [{"item_id": f["item_id"], "rater": f["rater"], "reason": FLAG_REASONS.get(f["reason"], f["reason"]),
                   "note": f["note"], "timestamp": f["timestamp"]} for f in flags],
        "deadline": _when(task.deadline) if task.deadline else None,
        "done": sum(1 for i in per_item if i["rated"] >= i["raters"] > 0), "n_items": len(items),
    }


def live_agreement(task, ratings) -> dict:
    """Per dimension: items rated by 2+ raters, percent agreement and Krippendorff's alpha (None while too few)."""
    config = AgreementConfig(n_boot=0, scale=None if task.pairwise else (task.scale_min, task.scale_max))
    try:
        report = agreement(ratings, None, config) if ratings else {}
    except (ReviewError, ValueError):  # too few ratings for any figure yet
        report = {}
    raters = defaultdict(set)
    for r in ratings:
        raters[(r.dimension, r.item_id)].add(r.rater)
    level = "ordinal"  # rating scales and A < tie < B are ordered categories
    return {d: {"shared": sum(1 for (dim, _), who in raters.items() if dim == d and len(who) > 1),
                "percent_agreement": report.get(d, {}).get("percent_agreement", {}).get("value"),
                "alpha": report.get(d, {}).get("krippendorff_alpha", {}).get(level, {}).get("value"),
                "level": level} for d in task.dimensions}


def calibration(store: ReviewStore, name: str) -> dict[str, dict]:
    """Per rater: how many gold answers they gave, the share matching the known answer, and their
    bias: the mean of (their score - the other raters' mean score) over items both rated (rating tasks)."""
    task = store.task(name)
    gold = {it.item_id: it.gold for it in store.items(name) if it.gold}
    ratings = store.ratings(name)
    out: dict[str, dict] = {}
    scores = defaultdict(dict)  # (item, dim) -> rater -> score
    for r in ratings:
        answer = r.preference if task.pairwise else (None if r.score is None else int(r.score))
        known = (gold.get(r.item_id) or {}).get(r.dimension)
        c = out.setdefault(r.rater, {"gold_n": 0, "gold_right": 0, "offsets": []})
        if known is not None:
            c["gold_n"] += 1
            c["gold_right"] += int(answer == known)
        if r.score is not None:
            scores[(r.item_id, r.dimension)][r.rater] = r.score
    for per in scores.values():
        for rater, s in per.items():
            others = [v for k, v in per.items() if k != rater]
            if others:
                out[rater]["offsets"].append(s - statistics.fmean(others))
    return {rater: {"gold_n": c["gold_n"], "gold_accuracy": c["gold_right"] / c["gold_n"] if c["gold_n"] else None,
                    "bias": statistics.fmean(c["offsets"]) if c["offsets"] else None} for rater, c in out.items()}


def _when(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _median(xs):
    return statistics.median(xs) if xs else None
