"""The review web app: server-rendered pages, one form post per action.

`create_app` wires the pieces: security headers, errors that never reach the
user as a bare 500, sign-in (this file), the rater's pages (`rater_pages.py`) and
the owner's pages and API (`owner_pages.py`).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from tunelab.review.auth import (ADMIN_COOKIE, ADMIN_SESSION_S, LINK_USES, SESSION_S, Authenticator, hash_token,
                                 session_cookie, set_cookie)
from tunelab.review.errors import ReviewError
from tunelab.review.render import TEMPLATES
from tunelab.review.store import ReviewStore

log = logging.getLogger("tunelab.review")


def create_app(db_path: str | Path, admin_token: str) -> FastAPI:
    from tunelab.review import owner_pages, rater_pages

    store = ReviewStore(db_path)
    app = FastAPI(title="tunelab review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.auth = Authenticator(store, admin_token)
    app.middleware("http")(security_headers)
    app.add_exception_handler(ReviewError, review_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.include_router(signin_router)
    app.include_router(rater_pages.router)
    app.include_router(owner_pages.router)
    return app


async def security_headers(request: Request, call_next):
    nonce = secrets.token_urlsafe(16)
    request.state.nonce = nonce
    try:
        response = await call_next(request)
    except Exception:  # a bug must give a logged 500, never a dead server or a silent one
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        response = error(request, "Internal error; nothing was saved. Reload to try again.", 500)
    # Defence in depth on top of escaping: only our own nonce'd script and style may run.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"  # sign-in tokens must not leak via Referer
    response.headers["Cache-Control"] = "no-store"
    return response


async def review_error(request: Request, exc: ReviewError):
    return error(request, str(exc), 404 if str(exc).startswith("no review task") else 400)


async def http_error(request: Request, exc: HTTPException):
    return error(request, str(exc.detail), exc.status_code)


async def bad_request(request: Request, exc: RequestValidationError):
    return error(request, "Malformed request.", 400)


# ---- sign-in: the rater's personal link and the owner's single-use link, each confirmed by a same-origin POST

signin_router = APIRouter()
BAD_LINK = ("This sign-in link is not valid: it expired, was used up or was re-issued. "
            "Ask the task owner for a new one.")
BAD_ADMIN_LINK = ("This admin link is not valid: admin links work once, for an hour. "
                  "Get a new one with `tunelab review admin-link`.")


@signin_router.get("/signin/{token}")
def signin_page(token: str, request: Request):
    auth: Authenticator = request.app.state.auth
    store: ReviewStore = request.app.state.store
    found = store.peek_link(hash_token(token), max_uses=None)
    if found is not None:
        p = auth.rater(request, found[0])
        if p is not None and p.rater == found[1]:  # already signed in: do not spend a use
            return RedirectResponse(f"/rate/{quote(found[0], safe='')}", status_code=303)
    if store.peek_link(hash_token(token), LINK_USES) is None:
        return error(request, BAD_LINK, 401)
    task, rater = found
    return page(request, "signin.html", {"task": task, "rater": rater, "action": f"/signin/{token}"})


@signin_router.post("/signin/{token}")
def signin(token: str, request: Request):
    got = request.app.state.auth.sign_in_rater(token) if same_origin(request) else False
    if not got:
        return _refused(request, got, BAD_LINK)
    session, task, _ = got
    return _signed_in(request, f"/rate/{quote(task, safe='')}", session_cookie(task), session, SESSION_S)


@signin_router.get("/admin/signin/{link}")
def admin_signin_page(link: str, request: Request):
    if not request.app.state.store.admin_link_valid(hash_token(link)):
        return error(request, BAD_ADMIN_LINK, 401)
    return page(request, "signin.html", {"task": "", "rater": "the task owner", "action": f"/admin/signin/{link}"})


@signin_router.post("/admin/signin/{link}")
def admin_signin(link: str, request: Request):
    session = request.app.state.auth.sign_in_admin(link) if same_origin(request) else False
    if not session:
        return _refused(request, session, BAD_ADMIN_LINK)
    return _signed_in(request, "/admin", ADMIN_COOKIE, session, ADMIN_SESSION_S)


def _refused(request: Request, got: None | bool, bad_link: str) -> Response:
    """False: the POST came from another site (login CSRF); None: the link is spent, expired or unknown."""
    if got is False:
        return error(request, "Sign in from the page your link opens.", 403)
    return error(request, bad_link, 401)


def _signed_in(request: Request, location: str, cookie: str, session: str, max_age: int) -> Response:
    resp = RedirectResponse(location, status_code=303)
    set_cookie(resp, request, cookie, session, max_age)
    return resp


@signin_router.get("/")
def home(request: Request):
    auth: Authenticator = request.app.state.auth
    if auth.admin(request) is not None:
        return RedirectResponse("/admin", status_code=303)
    p = auth.rater(request, None)
    if p is None:
        return error(request, "Sign in with your personal link first.", 401)
    return RedirectResponse(f"/rate/{quote(p.task, safe='')}", status_code=303)


def same_origin(request: Request) -> bool:
    """A sign-in POST must come from our own page (against login CSRF). Browsers say where a request
    comes from in Sec-Fetch-Site; Origin is 'null' under our no-referrer policy, so it is the fallback."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True  # not a browser (curl, scripts): cross-site request forgery needs one
    return urlsplit(origin).netloc == request.headers.get("host", "")


def page(request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
    nonce = getattr(request.state, "nonce", "")
    return HTMLResponse(TEMPLATES.get_template(name).render(nonce=nonce, **ctx), status_code=status)


def error(request: Request, message: str, status: int) -> Response:
    if status >= 500:
        log.error("%s %s -> %d: %s", request.method, request.url.path, status, message)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    return page(request, "error.html", {"message": message}, status)
