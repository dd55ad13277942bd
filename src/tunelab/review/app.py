"""The rating web app: server-rendered pages, one form post per item.

Blinding is enforced here: rater pages get the input, the output(s) shown as
"Response 1/2" in a per-rater order, and the rater's own earlier answers —
never variant names, automated scores or other raters' ratings.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tunelab.review.auth import ADMIN_COOKIE, SESSION_COOKIE, Authenticator, Principal, same
from tunelab.review.errors import ReviewError
from tunelab.review.store import Rating, ReviewStore
from tunelab.review.tasks import DIMENSION_HELP, anchors, progress, swapped

MAX_COMMENT = 5000
_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),  # model output is untrusted text
)


def create_app(db_path: str | Path, admin_token: str) -> FastAPI:
    store = ReviewStore(db_path)
    auth = Authenticator(store, admin_token)
    app = FastAPI(title="tunelab review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        nonce = secrets.token_urlsafe(16)
        request.state.nonce = nonce
        try:
            response = await call_next(request)
        except Exception:  # a bug must give a 500 page, never a dead server
            response = _page("error.html", {"message": "Internal error; the rating was not saved."}, 500, nonce)
        # Defence in depth on top of escaping: only our own nonce'd script and style may run.
        response.headers["Content-Security-Policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # sign-in tokens must not leak via Referer
        response.headers["Cache-Control"] = "no-store"
        return response

    def who(request: Request) -> Principal | None:
        return auth.principal(request)

    def deny(request: Request, status: int = 401) -> Response:
        msg = "Sign in with your personal link first." if status == 401 else "Not yours to see."
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": msg}, status_code=status)
        return _page("error.html", {"message": msg}, status, request.state.nonce)

    @app.get("/signin/{token}")
    def signin(token: str, request: Request):
        got = auth.sign_in_rater(token)
        if got is None:
            return _page("error.html", {"message": "This sign-in link is not valid (it may have been re-issued)."},
                         401, request.state.nonce)
        session, task, _ = got
        resp = RedirectResponse(f"/rate/{quote(task, safe='')}", status_code=303)
        resp.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict", path="/")
        return resp

    @app.get("/admin/signin/{token}")
    def admin_signin(token: str, request: Request):
        session = auth.sign_in_admin(token)
        if session is None:
            return deny(request)
        resp = RedirectResponse("/admin", status_code=303)
        resp.set_cookie(ADMIN_COOKIE, session, httponly=True, samesite="strict", path="/")
        return resp

    @app.get("/")
    def home(request: Request):
        p = who(request)
        if p is None:
            return deny(request)
        return RedirectResponse("/admin" if p.admin else f"/rate/{quote(p.task, safe='')}", status_code=303)

    @app.get("/rate/{task}")
    def next_item(task: str, request: Request):
        p = who(request)
        if p is None or p.admin:
            return deny(request)
        if p.task != task:
            return deny(request, 403)
        done = store.done_items(task, p.rater)
        todo = [i for i, _ in store.assignments(task, p.rater) if i not in done]
        if not todo:
            total = len(store.assignments(task, p.rater))
            return _page("done.html", {"task": task, "rater": p.rater, "total": total}, 200, request.state.nonce)
        return RedirectResponse(f"/rate/{quote(task, safe='')}/{_pos(store, task, todo[0])}", status_code=303)

    @app.get("/rate/{task}/{position}")
    def rate_page(task: str, position: str, request: Request):
        p = who(request)
        if p is None or p.admin:
            return deny(request)
        item_id = _item_at(store, task, position) if p.task == task else None
        if item_id is None or item_id not in {i for i, _ in store.assignments(task, p.rater)}:
            return deny(request, 403)
        return _page("rate.html", _rate_context(store, p, item_id), 200, request.state.nonce)

    @app.post("/rate/{task}/{position}")
    async def rate_submit(task: str, position: str, request: Request):
        p = who(request)
        if p is None or p.admin:
            return deny(request)
        item_id = _item_at(store, task, position) if p.task == task else None
        if item_id is None or item_id not in {i for i, _ in store.assignments(task, p.rater)}:
            return deny(request, 403)
        try:
            form = await request.form()
        except Exception:
            return _page("error.html", {"message": "Could not read the form."}, 400, request.state.nonce)
        if not same(str(form.get("csrf", "")), p.csrf):
            return _page("error.html", {"message": "The form expired or did not come from this site; reload."},
                         403, request.state.nonce)
        if form.get("action") == "skip":
            store.skip(task, item_id, p.rater)
            return RedirectResponse(f"/rate/{quote(task, safe='')}", status_code=303)
        try:
            ratings = _parse_ratings(store, p, item_id, form)
        except ReviewError as exc:
            return _page("error.html", {"message": str(exc)}, 400, request.state.nonce)
        store.submit(task, ratings)
        return RedirectResponse(f"/rate/{quote(task, safe='')}", status_code=303)

    @app.get("/api/me")
    def api_me(request: Request):
        p = who(request)
        if p is None or p.admin:
            return deny(request)
        return _own(store, p.task, p.rater, as_rater=True)

    @app.get("/api/tasks/{task}/raters/{rater}")
    def api_rater(task: str, rater: str, request: Request):
        p = who(request)
        if p is None:
            return deny(request)
        if not p.may_read(task, rater):
            return deny(request, 403)
        return _own(store, task, rater, as_rater=not p.admin)

    @app.get("/api/tasks/{task}/status")
    def api_status(task: str, request: Request):
        p = who(request)
        if p is None:
            return deny(request)
        if not p.admin:
            return deny(request, 403)
        try:
            return {"task": task, "raters": progress(store, task)}
        except ReviewError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.get("/api/tasks/{task}/ratings")
    def api_ratings(task: str, request: Request):
        p = who(request)
        if p is None:
            return deny(request)
        if not p.admin:
            return deny(request, 403)
        return [r.__dict__ for r in store.ratings(task)]

    @app.get("/admin")
    def admin_page(request: Request):
        p = who(request)
        if p is None:
            return deny(request)
        if not p.admin:
            return deny(request, 403)
        tasks = [{"name": t, "raters": progress(store, t), "items": len(store.items(t))} for t in store.task_names()]
        return _page("admin.html", {"tasks": tasks}, 200, request.state.nonce)

    app.state.store = store
    return app


def _rate_context(store: ReviewStore, p: Principal, item_id: str) -> dict:
    task = store.task(p.task)
    item = store.item(p.task, item_id)
    mine = [i for i, _ in store.assignments(p.task, p.rater)]
    done = store.done_items(p.task, p.rater)
    own = {r.dimension: r for r in store.ratings(p.task, p.rater) if r.item_id == item_id}
    flip = task.pairwise and swapped(task, item_id, p.rater)
    if task.pairwise:
        outputs = [item.output_b, item.output_a] if flip else [item.output_a, item.output_b]
        options = [("left", "1", "Response 1 is better"), ("tie", "2", "Tie"), ("right", "3", "Response 2 is better")]
    else:
        outputs = [item.output_a]
        options = [(str(v), str(v), label) for v, label in anchors(task.scale_min, task.scale_max)]
    dims = []
    for i, d in enumerate(task.dimensions):
        prev = own.get(d)
        chosen = None
        if prev is not None:
            chosen = _side(prev.preference, flip) if task.pairwise else str(int(prev.score))
        dims.append({"index": i, "name": d, "help": DIMENSION_HELP.get(d, ""), "chosen": chosen})
    comment = next((r.comment for r in own.values() if r.comment), "")
    return {
        "task": p.task, "rater": p.rater, "item_id": item_id,
        "action": f"/rate/{quote(p.task, safe='')}/{item.position}", "input": item.input, "outputs": outputs,
        "pairwise": task.pairwise, "dims": dims, "options": options, "csrf": p.csrf, "comment": comment,
        "done": len(done), "total": len(mine), "position": mine.index(item_id) + 1,
    }


def _parse_ratings(store: ReviewStore, p: Principal, item_id: str, form) -> list[Rating]:
    task = store.task(p.task)
    comment = str(form.get("comment", ""))[:MAX_COMMENT]
    out = []
    for i, d in enumerate(task.dimensions):
        raw = str(form.get(f"dim_{i}", ""))
        if task.pairwise:
            if raw not in ("left", "right", "tie"):
                raise ReviewError(f"{d}: choose Response 1, Response 2 or Tie")
            flip = swapped(task, item_id, p.rater)
            pref = "tie" if raw == "tie" else ("A" if (raw == "left") != flip else "B")
            out.append(Rating(item_id, p.rater, d, preference=pref, comment=comment))
        else:
            if not raw.isdigit() or not task.scale_min <= int(raw) <= task.scale_max:
                raise ReviewError(f"{d}: choose a rating from {task.scale_min} to {task.scale_max}")
            out.append(Rating(item_id, p.rater, d, score=float(raw), comment=comment))
    return out


def _side(pref: str | None, flip: bool) -> str | None:
    if pref in (None, "tie"):
        return pref
    return "left" if (pref == "A") != flip else "right"


def _own(store: ReviewStore, task: str, rater: str, as_rater: bool) -> dict:
    """A rater's assignments and ratings. Shown to the rater, items are named by position
    (ids may carry variant names) and pairwise preferences stay in the rater's own
    left/right terms, so the API reveals nothing the page does not."""
    t = store.task(task)
    pos = {it.item_id: it.position for it in store.items(task)}
    ratings = []
    for r in store.ratings(task, rater):
        row = dict(r.__dict__)
        if as_rater:
            row["item"] = pos[row.pop("item_id")]
            if t.pairwise:
                row["preference"] = _side(r.preference, swapped(t, r.item_id, rater))
        ratings.append(row)
    ids = [i for i, _ in store.assignments(task, rater)]
    return {"task": task, "rater": rater, "assignments": [pos[i] for i in ids] if as_rater else ids,
            "ratings": ratings}


def _pos(store: ReviewStore, task: str, item_id: str) -> int:
    return store.item(task, item_id).position


def _item_at(store: ReviewStore, task: str, position: str) -> str | None:
    if not position.isdigit():
        return None
    return store.item_at(task, int(position))


def _page(name: str, ctx: dict, status: int, nonce: str) -> HTMLResponse:
    return HTMLResponse(_TEMPLATES.get_template(name).render(nonce=nonce, **ctx), status_code=status)
