"""The rater's pages: guidelines, one item at a time, their own queue of skipped and flagged items.

Blinding is enforced here: a rater page shows the input, the output(s) as
"Response 1/2" in a per-rater left/right order, and the rater's own earlier
answers, never variant names, item ids, automated scores or other raters' work.
Items are addressed by the rater's own opaque handle and walked in the rater's
own shuffled order, so neither the URL nor the position says which variant it is.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse

from tunelab.review.app import page
from tunelab.review.auth import Principal, same, session_cookie
from tunelab.review.errors import ReviewError
from tunelab.review.guards import require_any_rater, require_rater
from tunelab.review.store import FLAG_REASONS, Rating, ReviewStore, Task
from tunelab.review.tasks import anchors, handle, rater_order, swapped

MAX_COMMENT = 5000
router = APIRouter()


@router.get("/rate/{task}")
def next_item(task: str, request: Request, begin: int = 0, p: Principal = Depends(require_rater)):
    store: ReviewStore = request.app.state.store
    t = store.task(task)
    if not begin and not any(r == p.rater for _, r in store.started_pairs(task)):
        return _to(task, "guidelines")
    st = _states(store, p)
    todo = [h for h, i in rater_order(store, t, p.rater) if i not in st]
    if todo:
        return _to(task, todo[0])
    return page(request, "done.html", {**_frame(t, p), **_queue(store, t, p)})


@router.get("/rate/{task}/guidelines")
def guidelines(task: str, request: Request, p: Principal = Depends(require_rater)):
    t = request.app.state.store.task(task)
    return page(request, "guidelines.html", {**_frame(t, p), "options": _options(t)})


@router.get("/rate/{task}/queue")
def queue(task: str, request: Request, p: Principal = Depends(require_rater)):
    store: ReviewStore = request.app.state.store
    t = store.task(task)
    return page(request, "queue.html", {**_frame(t, p), **_queue(store, t, p)})


@router.post("/rate/{task}/logout")
async def logout(task: str, request: Request, p: Principal = Depends(require_rater)):
    form = await request.form()
    if not same(str(form.get("csrf", "")), p.csrf):
        raise HTTPException(403, "The form expired or did not come from this site; reload.")
    request.app.state.store.end_session(p.session)
    resp = page(request, "error.html", {"message": "You are signed out. Your link signs you in again."})
    resp.delete_cookie(session_cookie(task), path="/")
    return resp


@router.get("/rate/{task}/{h}")
def rate_page(task: str, h: str, request: Request, p: Principal = Depends(require_rater)):
    store: ReviewStore = request.app.state.store
    t = store.task(task)
    item_id = _item_of(store, t, p, h)
    store.opened(task, item_id, p.rater)
    return page(request, "rate.html", _rate_context(store, t, p, item_id, h))


@router.post("/rate/{task}/{h}")
async def rate_submit(task: str, h: str, request: Request, p: Principal = Depends(require_rater)):
    store: ReviewStore = request.app.state.store
    t = store.task(task)
    item_id = _item_of(store, t, p, h)
    form = await request.form()
    if not same(str(form.get("csrf", "")), p.csrf):
        raise HTTPException(403, "The form expired or did not come from this site; reload.")
    if t.deadline is not None and time.time() > t.deadline:
        raise HTTPException(403, f"The deadline ({_when(t.deadline)}) has passed; answers are closed.")
    action = form.get("action")
    if action == "skip":
        if item_id not in store.rated_items(task, p.rater):
            store.skip(task, item_id, p.rater)
    elif action == "flag":
        store.flag(task, item_id, p.rater, str(form.get("reason", "")), str(form.get("note", ""))[:MAX_COMMENT])
    elif action == "undo":
        store.undo(task, item_id, p.rater)
        return _to(task, "queue" if form.get("back") == "queue" else h)
    elif action == "submit":
        store.submit(task, _parse_ratings(t, p, item_id, form))
    else:
        raise ReviewError("unknown action; use the page's buttons")
    return _to(task, "")


@router.get("/api/me")
def api_me(request: Request, p: Principal = Depends(require_any_rater)):
    """This rater's work; a browser signed in to several tasks names one with ?task=."""
    return rater_view(request.app.state.store, p.task, p.rater)


def rater_view(store: ReviewStore, task: str, rater_name: str) -> dict:
    """A rater's assignments and ratings in their own terms: items by handle (ids may carry variant
    names) and pairwise preferences as left/right, so the API reveals nothing the page does not."""
    t = store.task(task)
    ratings = []
    for r in store.ratings(task, rater_name):
        row = dict(r.__dict__)
        row["item"] = handle(t, row.pop("item_id"), rater_name)
        if t.pairwise:
            row["preference"] = _side(r.preference, swapped(t, r.item_id, rater_name))
        ratings.append(row)
    return {"task": task, "rater": rater_name, "assignments": [h for h, _ in rater_order(store, t, rater_name)],
            "ratings": ratings}


def _item_of(store: ReviewStore, t: Task, p: Principal, h: str) -> str:
    for hh, item_id in rater_order(store, t, p.rater):
        if hh == h:
            return item_id
    raise HTTPException(403, "Not yours to see.")


def _states(store: ReviewStore, p: Principal) -> dict[str, str]:
    """item -> 'rated' / 'skipped' / 'flagged' for items this rater has set aside or answered."""
    st = {i: "skipped" for i in store.skipped_items(p.task, p.rater)}
    st.update({f["item_id"]: "flagged" for f in store.flags(p.task, p.rater)})
    st.update({i: "rated" for i in store.rated_items(p.task, p.rater)})
    return st


def _queue(store: ReviewStore, t: Task, p: Principal) -> dict:
    st = _states(store, p)
    reasons = {f["item_id"]: FLAG_REASONS.get(f["reason"], f["reason"]) for f in store.flags(p.task, p.rater)}
    rows = [{"n": n, "handle": h, "state": st.get(i, "to do"), "reason": reasons.get(i, "")}
            for n, (h, i) in enumerate(rater_order(store, t, p.rater), 1)]
    return {"rows": rows, "total": len(rows), "rated": sum(r["state"] == "rated" for r in rows),
            "aside": [r for r in rows if r["state"] in ("skipped", "flagged") or r["reason"]]}


def _frame(t: Task, p: Principal) -> dict:
    """What every rater page needs: who, which task, the sign-out form and the deadline."""
    return {"task": t.name, "rater": p.rater, "csrf": p.csrf, "base": f"/rate/{quote(t.name, safe='')}",
            "deadline": _when(t.deadline) if t.deadline else None, "guidelines": t.guidelines,
            "dims": [{"name": d, "help": t.descriptions.get(d, "")} for d in t.dimensions]}


def _rate_context(store: ReviewStore, t: Task, p: Principal, item_id: str, h: str) -> dict:
    item = store.item(t.name, item_id)
    order = [hh for hh, _ in rater_order(store, t, p.rater)]
    st = _states(store, p)
    own = {r.dimension: r for r in store.ratings(t.name, p.rater) if r.item_id == item_id}
    flip = t.pairwise and swapped(t, item_id, p.rater)
    inputs = [item.input]
    if t.pairwise:
        outputs = [item.output_b, item.output_a] if flip else [item.output_a, item.output_b]
        if item.input_b is not None and item.input_b != item.input:
            inputs = [item.input_b, item.input] if flip else [item.input, item.input_b]
    else:
        outputs = [item.output_a]
    dims = []
    for i, d in enumerate(t.dimensions):
        prev = own.get(d)
        chosen = None
        if prev is not None:
            chosen = _side(prev.preference, flip) if t.pairwise else str(int(prev.score))
        dims.append({"index": i, "name": d, "help": t.descriptions.get(d, ""), "chosen": chosen})
    flag = next((f for f in store.flags(t.name, p.rater) if f["item_id"] == item_id), None)
    n = order.index(h)
    return {
        **_frame(t, p), "action": f"/rate/{quote(t.name, safe='')}/{h}", "inputs": inputs, "outputs": outputs,
        "pairwise": t.pairwise, "dims": dims, "options": _options(t), "comment": next(
            (r.comment for r in own.values() if r.comment), ""),
        "done": sum(1 for s in st.values() if s == "rated"), "total": len(order), "position": n + 1,
        "prev": order[n - 1] if n > 0 else None, "next": order[n + 1] if n + 1 < len(order) else None,
        "skipped": st.get(item_id) == "skipped", "rated": bool(own),
        "flag": FLAG_REASONS.get(flag["reason"]) if flag else None, "reasons": list(FLAG_REASONS.items()),
    }


def _options(t: Task) -> list[tuple[str, str, str]]:
    if t.pairwise:
        return [("left", "1", "Response 1 is better"), ("tie", "2", "Tie"), ("right", "3", "Response 2 is better")]
    return [(str(v), str(v), label) for v, label in anchors(t.scale_min, t.scale_max)]


def _parse_ratings(t: Task, p: Principal, item_id: str, form) -> list[Rating]:
    comment = str(form.get("comment", ""))[:MAX_COMMENT]
    out = []
    for i, d in enumerate(t.dimensions):
        raw = str(form.get(f"dim_{i}", ""))
        if t.pairwise:
            if raw not in ("left", "right", "tie"):
                raise ReviewError(f"{d}: choose Response 1, Response 2 or Tie")
            flip = swapped(t, item_id, p.rater)
            pref = "tie" if raw == "tie" else ("A" if (raw == "left") != flip else "B")
            out.append(Rating(item_id, p.rater, d, preference=pref, comment=comment))
        else:
            # ASCII digits only: str.isdigit() also accepts '²', which int() then rejects.
            if not re.fullmatch(r"[0-9]", raw) or not t.scale_min <= int(raw) <= t.scale_max:
                raise ReviewError(f"{d}: choose a rating from {t.scale_min} to {t.scale_max}")
            out.append(Rating(item_id, p.rater, d, score=float(raw), comment=comment))
    return out


def _side(pref: str | None, flip: bool) -> str | None:
    if pref in (None, "tie"):
        return pref
    return "left" if (pref == "A") != flip else "right"


def _to(task: str, rest: str) -> RedirectResponse:
    url = f"/rate/{quote(task, safe='')}" + (f"/{rest}" if rest else "")
    return RedirectResponse(url, status_code=303)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
