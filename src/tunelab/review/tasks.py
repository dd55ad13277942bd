"""What a review task is and who rates what.

A task is a list of items (an input plus one output, or two outputs in pairwise
mode), a list of dimensions rated on an integer scale, and K raters per item.
Assignment is recomputed whenever a rater is added or removed: slots a rater has
already opened, rated, skipped or flagged stay theirs (so nobody loses work in
progress), every other slot goes to the least-loaded rater, so each item gets K
raters and loads differ by at most one. Gold (calibration) items go to everyone.
Each rater walks their items in their own secret shuffled order.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.io.records import jsonl_records
from tunelab.review.errors import ReviewError
from tunelab.review.store import Item, ReviewStore, Task

DEFAULT_DIMENSIONS = ["overall"]

# Shown next to the dimension on the rater page; other dimensions need a description (--describe).
DIMENSION_HELP = {
    "overall": "How good is this response overall?",
    "correctness": "Is it factually and logically right?",
    "helpfulness": "Does it do what the user needed?",
    "creativity": "Is it original rather than generic?",
    "humour": "Is it funny, where humour fits?",
    "engagement": "Would you want to keep reading?",
}


@dataclass
class TaskSpec:
    name: str
    dimensions: list[str]
    scale: tuple[int, int] = (1, 5)
    raters_per_item: int = 2
    pairwise: bool = False
    sample: int | None = None
    seed: int = 0
    guidelines: str = ""
    descriptions: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None


def create_task(store: ReviewStore, spec: TaskSpec, items: list[Item], source: str) -> Task:
    """Validate the spec, sample items and store the task (no raters yet)."""
    if not spec.name.strip() or "/" in spec.name or len(spec.name) > 100:
        raise ReviewError(f"task name {spec.name!r}: expected 1-100 characters without '/' (it is part of URLs)")
    if not items:
        raise ReviewError(f"review task {spec.name!r}: no items to review from {source}")
    if not spec.dimensions or any(not d.strip() or "|" in d for d in spec.dimensions):
        raise ReviewError(f"--dimensions: expected comma-separated names, got {spec.dimensions!r}")
    descriptions = {d: spec.descriptions.get(d) or DIMENSION_HELP.get(d, "") for d in spec.dimensions}
    unknown = sorted(set(spec.descriptions) - set(spec.dimensions))
    if unknown:
        raise ReviewError(f"--describe: {unknown[0]!r} is not one of the dimensions ({', '.join(spec.dimensions)})")
    missing = [d for d, text in descriptions.items() if not text.strip()]
    if missing:
        raise ReviewError(f"--describe: dimension {missing[0]!r} needs a description raters can follow, "
                          f"e.g. --describe '{missing[0]}=Is the answer ...?'")
    if spec.raters_per_item < 1:
        raise ReviewError(f"--raters-per-item: expected at least 1, got {spec.raters_per_item}")
    ids = [it.item_id for it in items]
    dup = [i for i, c in Counter(ids).items() if c > 1]
    if dup:
        raise ReviewError(f"{source}: item ids must be unique; repeated: {', '.join(dup[:5])}")
    for it in items:
        if spec.pairwise and it.output_b is None:
            raise ReviewError(f"{source}: item {it.item_id!r} has one output but the task is pairwise")
        if not spec.pairwise and it.output_b is not None:
            raise ReviewError(f"{source}: item {it.item_id!r} has two outputs; pass --pairwise for A/B review")
        _check_gold(source, it, spec)
    if spec.sample is not None and spec.sample < len(items):
        rng = random.Random(spec.seed)
        keep = set(rng.sample(range(len(items)), spec.sample))
        items = [it for i, it in enumerate(items) if i in keep or it.gold is not None]
    task = Task(spec.name, "pairwise" if spec.pairwise else "single", list(spec.dimensions), spec.scale[0],
                spec.scale[1], spec.raters_per_item, source, secrets.token_hex(16), time.time(), spec.guidelines,
                descriptions, spec.deadline)
    store.create_task(task, items)
    return task


def _check_gold(source: str, it: Item, spec: TaskSpec) -> None:
    for dim, answer in (it.gold or {}).items():
        if dim not in spec.dimensions:
            raise ReviewError(f"{source}: item {it.item_id!r}: gold answer for unknown dimension {dim!r}")
        ok = answer in ("A", "B", "tie") if spec.pairwise else (
            isinstance(answer, int) and not isinstance(answer, bool) and spec.scale[0] <= answer <= spec.scale[1])
        if not ok:
            want = "A, B or tie" if spec.pairwise else f"an integer from {spec.scale[0]} to {spec.scale[1]}"
            raise ReviewError(f"{source}: item {it.item_id!r}: gold {dim!r} must be {want}, got {answer!r}")


def rebalance(store: ReviewStore, task_name: str) -> dict[str, int]:
    """Recompute assignments for the current raters; returns items per rater."""
    task = store.task(task_name)
    raters = store.raters(task_name)
    items = store.items(task_name)
    locked = store.started_pairs(task_name)
    locked |= {(it.item_id, r) for it in items if it.gold is not None for r in raters}
    pairs = assign([it.item_id for it in items], raters, task.raters_per_item, locked)
    store.replace_assignments(task_name, pairs)
    return dict(Counter(r for _, r in pairs))


def handle(task: Task, item_id: str, rater: str) -> str:
    """The rater's opaque name for an item (in URLs and the rater API). Sorting by it is the rater's
    own shuffled order; it reveals neither the item id, nor the variant, nor other raters' order."""
    return hmac.new(task.salt.encode(), f"order\x00{item_id}\x00{rater}".encode(), hashlib.sha256).hexdigest()[:16]


def rater_order(store: ReviewStore, task: Task, rater: str) -> list[tuple[str, str]]:
    """(handle, item_id) of the rater's assigned items, in their own order."""
    return sorted((handle(task, i, rater), i) for i, _ in store.assignments(task.name, rater))


def assign(items: list[str], raters: list[str], k: int, locked: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each item gets min(k, #raters) raters; greedy least-loaded keeps loads within one of each other.

    Ties are broken by a hash of (item, rater) rather than rater order, so that rater
    pairs overlap on varied items — pairwise Cohen's kappa needs shared items."""
    k_eff = min(k, len(raters))
    on_item: dict[str, set[str]] = defaultdict(set)
    load: Counter[str] = Counter()
    known = set(raters)
    for item, rater in locked:
        if rater in known:
            on_item[item].add(rater)
            load[rater] += 1
    out: list[tuple[str, str]] = []
    for item in items:
        free = sorted((r for r in raters if r not in on_item[item]), key=lambda r: (load[r], _h(item, r)))
        for r in free[: max(0, k_eff - len(on_item[item]))]:
            on_item[item].add(r)
            load[r] += 1
        out.extend((item, r) for r in sorted(on_item[item]))
    return out


def swapped(task: Task, item_id: str, rater: str) -> bool:
    """Whether this rater sees output B on the left for this item.

    Keyed by a per-task secret so the order is stable across reloads but a rater
    cannot work out which side is which variant."""
    mac = hmac.new(task.salt.encode(), f"{item_id}\x00{rater}".encode(), hashlib.sha256).digest()
    return bool(mac[0] & 1)


def anchors(scale_min: int, scale_max: int) -> list[tuple[int, str]]:
    """Labelled points of the scale: named ends (and middle, for odd scales)."""
    names5 = {1: "Very poor", 2: "Poor", 3: "Acceptable", 4: "Good", 5: "Excellent"}
    if (scale_min, scale_max) == (1, 5):
        return list(names5.items())
    out = [(v, str(v)) for v in range(scale_min, scale_max + 1)]
    out[0] = (scale_min, f"{scale_min} – Very poor")
    out[-1] = (scale_max, f"{scale_max} – Excellent")
    if (scale_max - scale_min) % 2 == 0 and scale_max - scale_min >= 2:
        mid = (scale_min + scale_max) // 2
        out[mid - scale_min] = (mid, f"{mid} – Acceptable")
    return out


def parse_scale(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise ReviewError(f"--scale: expected LOW-HIGH such as 1-5, got {text!r}") from None
    if not 0 <= lo < hi <= 9:
        # Single digits are the keyboard shortcuts, so the scale must fit in 0..9.
        raise ReviewError(f"--scale: expected 0 <= LOW < HIGH <= 9, got {text!r}")
    return lo, hi


def parse_descriptions(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        name, sep, text = p.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ReviewError(f"--describe: expected DIMENSION=description, got {p!r}")
        out[name.strip()] = text.strip()
    return out


def parse_deadline(text: str) -> float:
    from datetime import datetime, timezone

    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ReviewError(f"--deadline: expected an ISO date or time such as 2026-12-01 or "
                          f"2026-12-01T17:00, got {text!r}") from None
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


def parse_dimensions(text: str | None) -> list[str]:
    if not text:
        return list(DEFAULT_DIMENSIONS)
    return [d.strip() for d in text.split(",") if d.strip()]


def load_items_jsonl(path: str | Path) -> list[Item]:
    """Items produced elsewhere: one JSON object per line with `id`, `input` and either
    `output`, or `output_a` and `output_b` (optional `variant_a`, `variant_b`, and `input_b` when
    B answered a different prompt). Optional `gold`: {dimension: known answer} makes it a calibration item."""
    path = Path(path)
    items = []
    for n, obj in jsonl_records(path, ReviewError, "items"):
        for key in ("id", "input"):
            if key not in obj:
                raise ReviewError(f"{path}:{n}: missing field {key!r}")
        if "output" in obj:
            a, b = obj["output"], None
        elif "output_a" in obj and "output_b" in obj:
            a, b = obj["output_a"], obj["output_b"]
        else:
            raise ReviewError(f"{path}:{n}: expected field 'output', or 'output_a' and 'output_b'")
        gold = obj.get("gold")
        if gold is not None and not isinstance(gold, dict):
            raise ReviewError(f"{path}:{n}: field 'gold' must be an object dimension -> answer")
        input_b = obj.get("input_b")
        items.append(Item(str(obj["id"]), str(obj["input"]), str(a), None if b is None else str(b),
                          obj.get("variant_a", "A" if b is not None else None),
                          obj.get("variant_b", "B" if b is not None else None),
                          input_b=None if input_b is None else str(input_b), gold=gold))
    return items


def _h(item: str, rater: str) -> bytes:
    return hashlib.sha256(f"{item}\x00{rater}".encode()).digest()


def progress(store: ReviewStore, task_name: str) -> list[dict]:
    """Per rater: items assigned, rated, skipped (and not rated since), flagged, left to do."""
    store.task(task_name)  # an unknown task is an error, not an empty list
    out = []
    assigned = Counter(r for _, r in store.assignments(task_name))
    flagged = Counter(f["rater"] for f in store.flags(task_name))
    for rater in store.raters(task_name, removed=True):
        rated = store.rated_items(task_name, rater)
        skipped = store.skipped_items(task_name, rater) - rated
        flags = {f["item_id"] for f in store.flags(task_name, rater)}
        mine = {i for i, r in store.assignments(task_name, rater)}
        out.append({"rater": rater, "active": rater in store.raters(task_name), "assigned": assigned.get(rater, 0),
                    "rated": len(rated), "skipped": len(skipped), "flagged": flagged.get(rater, 0),
                    "left": len(mine - rated - skipped - flags)})
    return out
