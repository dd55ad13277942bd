"""The owner's pages and JSON API: the task list, each task's dashboard, exports, removing a rater.

The owner is signed in by a browser session (from a single-use admin link; form
posts carry its CSRF token) or sends the admin API token as a Bearer header.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from tunelab.review.app import page
from tunelab.review.auth import ADMIN_COOKIE, Principal, same
from tunelab.review.dashboard import dashboard
from tunelab.review.export import dumps, export_rows
from tunelab.review.guards import require_owner, require_reader
from tunelab.review.rater_pages import rater_view
from tunelab.review.store import ReviewStore
from tunelab.review.tasks import progress, rebalance

router = APIRouter()


async def checked_form(request: Request, p: Principal) -> dict:
    """A cookie session's form must carry its CSRF token; a Bearer-token request is not a browser's."""
    form = await request.form()
    if p.session and not same(str(form.get("csrf", "")), p.csrf):
        raise HTTPException(403, "The form expired or did not come from this site; reload.")
    return dict(form)


@router.get("/admin")
def admin_page(request: Request, p: Principal = Depends(require_owner)):
    store: ReviewStore = request.app.state.store
    tasks = [{"name": t, "url": f"/admin/tasks/{quote(t, safe='')}", "raters": progress(store, t),
              "n_items": len(store.items(t))} for t in store.task_names()]
    return page(request, "admin.html", {"tasks": tasks, "csrf": p.csrf})


@router.get("/admin/tasks/{task}")
def task_dashboard(task: str, request: Request, p: Principal = Depends(require_owner)):
    d = dashboard(request.app.state.store, task)
    return page(request, "dashboard.html", {**d, "csrf": p.csrf, "base": f"/admin/tasks/{quote(task, safe='')}"})


@router.get("/admin/tasks/{task}/export.{fmt}")
def export(task: str, fmt: str, request: Request, history: int = 0, p: Principal = Depends(require_owner)):
    text = dumps(export_rows(request.app.state.store, task, bool(history)), fmt)
    name = f"{task}-{'history' if history else 'latest'}.{fmt}".replace('"', "")
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(text, media_type=f"{media}; charset=utf-8",
                    headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"})


@router.post("/admin/tasks/{task}/remove-rater")
async def remove_rater(task: str, request: Request, p: Principal = Depends(require_owner)):
    form = await checked_form(request, p)
    store: ReviewStore = request.app.state.store
    store.remove_rater(task, str(form.get("rater", "")))
    rebalance(store, task)
    return RedirectResponse(f"/admin/tasks/{quote(task, safe='')}", status_code=303)


@router.post("/admin/logout")
async def logout(request: Request, p: Principal = Depends(require_owner)):
    await checked_form(request, p)
    request.app.state.store.end_session(p.session)
    resp = page(request, "error.html", {"message": "Signed out."})
    resp.delete_cookie(ADMIN_COOKIE, path="/")
    return resp


@router.get("/api/tasks/{task}/raters/{rater}")
def api_rater(task: str, rater: str, request: Request, p: Principal = Depends(require_reader)):
    if not p.may_read(task, rater):
        raise HTTPException(403, "Not yours to see.")
    store: ReviewStore = request.app.state.store
    if not p.admin:
        return rater_view(store, task, rater)
    store.task(task)
    if rater not in store.raters(task, removed=True):
        raise HTTPException(404, f"task {task!r} has no rater {rater!r}")
    return {"task": task, "rater": rater, "assignments": [i for i, _ in store.assignments(task, rater)],
            "ratings": [r.__dict__ for r in store.ratings(task, rater)]}


@router.get("/api/tasks/{task}/status")
def api_status(task: str, request: Request, p: Principal = Depends(require_owner)):
    return {"task": task, "raters": progress(request.app.state.store, task)}


@router.get("/api/tasks/{task}/ratings")
def api_ratings(task: str, request: Request, p: Principal = Depends(require_owner)):
    store: ReviewStore = request.app.state.store
    store.task(task)
    return [r.__dict__ for r in store.ratings(task)]


@router.get("/api/tasks/{task}/dashboard")
def api_dashboard(task: str, request: Request, p: Principal = Depends(require_owner)):
    d = dashboard(request.app.state.store, task)
    return {**d, "task": d["task"].name}
