"""Who is asking: raters by personal sign-in link, the owner by a single-use admin link or the API token.

Sign-in links, session ids and admin links are random 256-bit strings; only their
SHA-256 is stored, so a copy of the database does not let anyone sign in.

A sign-in link opens a same-origin confirmation page; its button (a POST from our
own page) spends one of the link's uses and sets the session cookie. Clicking the
link in webmail is a cross-site navigation, on which browsers withhold SameSite=Strict
cookies, so a cookie set during it would be missing on the next page; set from our own
page it is not. The cookie is SameSite=Lax (so a signed-in rater who clicks their link
again goes straight in without spending a use), HttpOnly, Secure over HTTPS, and
named per task, so one browser can rate several tasks. Every session carries its own
CSRF token, checked on every form post.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from tunelab.review.errors import ReviewError
from tunelab.review.store import ReviewStore
from tunelab.review.tasks import rebalance

SESSION_PREFIX = "tunelab_review_s_"
ADMIN_COOKIE = "tunelab_review_admin"
LINK_DAYS = 14.0  # a rater's link expires after this many days (re-issue with add-rater)
LINK_USES = 5  # ... and signs in at most this many times (new devices, cleared cookies)
SESSION_S = 7 * 86400.0
ADMIN_LINK_S = 3600.0
ADMIN_SESSION_S = 12 * 3600.0


@dataclass(frozen=True)
class Principal:
    kind: str  # 'rater' or 'admin'
    task: str = ""
    rater: str = ""
    csrf: str = ""
    session: str = ""  # hash of the session id, to end it on sign-out

    @property
    def admin(self) -> bool:
        return self.kind == "admin"

    def may_read(self, task: str, rater: str) -> bool:
        """Raters see only their own assignments and ratings; the admin sees everything."""
        return self.admin or (self.task == task and self.rater == rater)


def add_rater(store: ReviewStore, task: str, rater: str, base_url: str, days: float = LINK_DAYS) -> str:
    """Register (or re-issue) a rater and return their personal sign-in link."""
    store.task(task)  # raises a clear error for an unknown task
    if not rater.strip() or "|" in rater or len(rater) > 100:
        raise ReviewError(f"rater name {rater!r}: expected 1-100 characters without '|'")
    if days <= 0:
        raise ReviewError(f"--expires-days: expected a positive number, got {days}")
    token = new_token()
    store.add_rater(task, rater, hash_token(token), time.time() + days * 86400)
    rebalance(store, task)
    return f"{base_url.rstrip('/')}/signin/{token}"


def admin_link(store: ReviewStore, base_url: str) -> str:
    """A single-use admin sign-in link, valid for an hour: the owner's browser trades it for a session,
    so no permanent secret sits in browser history or server logs."""
    token = new_token()
    store.add_admin_link(hash_token(token), time.time() + ADMIN_LINK_S)
    return f"{base_url.rstrip('/')}/admin/signin/{token}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def session_cookie(task: str) -> str:
    # Cookie names must be plain tokens; task names may hold anything.
    return SESSION_PREFIX + hashlib.sha256(task.encode()).hexdigest()[:16]


def set_cookie(resp: Response, request: Request, name: str, value: str, max_age: float) -> None:
    resp.set_cookie(name, value, max_age=int(max_age), httponly=True, samesite="lax", path="/",
                    secure=request.url.scheme == "https")


class Authenticator:
    """Resolves a request to a Principal, or None when it carries no valid credential."""

    def __init__(self, store: ReviewStore, admin_token: str):
        self.store = store
        self._admin_hash = hash_token(admin_token)

    def admin(self, request: Request) -> Principal | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if same(hash_token(auth[7:].strip()), self._admin_hash):
                return Principal("admin")
            return None
        cookie = request.cookies.get(ADMIN_COOKIE)
        row = self.store.admin_session(hash_token(cookie)) if cookie else None
        return Principal("admin", csrf=row["csrf"], session=row["session_hash"]) if row else None

    def rater(self, request: Request, task: str | None) -> Principal | None:
        """The rater session for `task`; with task None, this browser's first rater session."""
        if task is None:
            names = sorted(k for k in request.cookies if k.startswith(SESSION_PREFIX))
            found = [p for p in (self._session(request.cookies[k]) for k in names) if p]
            return found[0] if found else None
        p = self._session(request.cookies.get(session_cookie(task), ""))
        return p if p is not None and p.task == task else None

    def _session(self, cookie: str) -> Principal | None:
        row = self.store.session(hash_token(cookie)) if cookie else None
        if row is None or row["rater"] not in self.store.raters(row["task"]):
            return None
        return Principal("rater", row["task"], row["rater"], row["csrf"], row["session_hash"])

    def sign_in_rater(self, token: str) -> tuple[str, str, str] | None:
        """Spend one use of a sign-in link on a new session: (session cookie value, task, rater)."""
        found = self.store.use_link(hash_token(token), LINK_USES)
        if found is None:
            return None
        task, rater = found
        session = new_token()
        self.store.create_session(hash_token(session), task, rater, new_token(), time.time() + SESSION_S)
        return session, task, rater

    def sign_in_admin(self, link: str) -> str | None:
        session = new_token()
        ok = self.store.use_admin_link(hash_token(link), hash_token(session), new_token(),
                                       time.time() + ADMIN_SESSION_S)
        return session if ok else None
