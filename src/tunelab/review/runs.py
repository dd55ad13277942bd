"""Reading an evaluation run (tunelab.evals.store) as review items and automated scores.

Review item ids: the eval item id when the run has one variant or the task is
pairwise; `<item_id>::<variant>` when several variants are rated one at a time.
Only repeat 0 of each output is reviewed. Raters never see these ids.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.evals.errors import EvalError
from tunelab.evals.store import Store
from tunelab.review.agreement import AutoScore
from tunelab.review.errors import ReviewError
from tunelab.review.store import Item, Task

SEP = "::"


def items_from_run(db: str | Path, run_id: str, pairwise: tuple[str, str] | None = None) -> tuple[str, list[Item]]:
    """(resolved run id, review items) for a run; failed outputs are left out."""
    rows, run_id = _results(db, run_id)
    variants = sorted({r.variant for r in rows})
    by_item: dict[str, dict[str, object]] = {}
    for r in rows:
        if r.output is not None:
            by_item.setdefault(r.item_id, {})[r.variant] = r
    if pairwise:
        missing = [v for v in pairwise if v not in variants]
        if missing:
            raise ReviewError(f"--pairwise: run {run_id} has no variant {missing[0]!r} "
                              f"(variants: {', '.join(variants)})")
        a, b = pairwise
        # Comparing two prompts: each response answered its own rendered prompt, and the rater must see both.
        return run_id, [Item(i, _input(v[a]), v[a].output, v[b].output, a, b, input_b=_input(v[b]))
                        for i, v in by_item.items() if a in v and b in v]
    items = []
    for i, v in by_item.items():
        for variant, r in sorted(v.items()):
            rid = i if len(variants) == 1 else f"{i}{SEP}{variant}"
            items.append(Item(rid, _input(r), r.output, None, variant, None))
    return run_id, items


def scores_from_run(db: str | Path, run_id: str, task: Task | None = None,
                    items: list[Item] | None = None) -> list[AutoScore]:
    """Metric scores, rubric-judge scores and pass/fail, and pairwise-judge verdicts as AutoScores
    keyed by review item id."""
    rows, run_id = _results(db, run_id)
    variants = sorted({r.variant for r in rows})
    out: list[AutoScore] = []
    if task is not None and task.pairwise:
        pair = {it.item_id: (it.variant_a, it.variant_b) for it in items or []}
        seen = set()
        for r in rows:
            if r.item_id not in pair or r.repeat != 0:
                continue
            a, b = pair[r.item_id]
            for judge, v in r.judges.items():
                if v.get("kind") != "pairwise" or set(v.get("pair") or []) != {a, b} or (r.item_id, judge) in seen:
                    continue
                seen.add((r.item_id, judge))
                w = v.get("winner")
                if w is not None:
                    out.append(AutoScore(r.item_id, judge, "tie" if w == "tie" else ("A" if w == a else "B"),
                                         kind="pairwise"))
        return out
    for r in rows:
        if r.repeat != 0:
            continue
        rid = r.item_id if len(variants) == 1 else f"{r.item_id}{SEP}{r.variant}"
        for metric, value in r.scores.items():
            if value is not None:
                out.append(AutoScore(rid, metric, float(value), kind="score"))
        for judge, v in r.judges.items():
            if v.get("kind") == "pairwise":
                continue
            if v.get("score") is not None:
                out.append(AutoScore(rid, judge, float(v["score"]), kind="score"))
            if v.get("passed") is not None:
                out.append(AutoScore(rid, f"{judge}.passed", bool(v["passed"]), kind="pass_fail"))
    return out


def _results(db, run_id):
    if not Path(db).exists():
        raise ReviewError(f"{db}: no such database; run `tunelab eval` first or pass --db")
    try:
        with Store(db) as store:
            run_id = store.resolve_run(run_id)
            return store.results(run_id), run_id
    except EvalError as exc:
        raise ReviewError(str(exc)) from exc


def _input(r) -> str:
    """What the rater reads as the input: the user turn, or every turn labelled when there are several."""
    msgs = [m for m in (r.rendered or []) if m.get("role") != "system"]
    if len(msgs) == 1:
        return str(msgs[0].get("content", ""))
    if msgs:
        return "\n\n".join(f"[{m.get('role')}]\n{m.get('content', '')}" for m in msgs)
    return "\n".join(f"{k}: {v}" for k, v in (r.vars or {}).items())
