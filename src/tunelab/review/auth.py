"""Who is asking: raters by personal sign-in link, the admin by token.

Sign-in tokens and session ids are random 256-bit strings; only their SHA-256
is stored, so a copy of the database does not let anyone sign in. A session
carries its own CSRF token, checked on every form post.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request

from tunelab.review.store import ReviewStore
from tunelab.review.tasks import rebalance

SESSION_COOKIE = "tunelab_review_session"
ADMIN_COOKIE = "tunelab_review_admin"


@dataclass(frozen=True)
class Principal:
    kind: str  # 'rater' or 'admin'
    task: str = ""
    rater: str = ""
    csrf: str = ""

    @property
    def admin(self) -> bool:
        return self.kind == "admin"

    def may_read(self, task: str, rater: str) -> bool:
        """Raters see only their own assignments and ratings; the admin sees everything."""
        return self.admin or (self.task == task and self.rater == rater)


def add_rater(store: ReviewStore, task: str, rater: str, base_url: str) -> str:
    """Register (or re-issue) a rater and return their personal sign-in link."""
    from tunelab.review.errors import ReviewError

    store.task(task)  # raises a clear error for an unknown task
    if not rater.strip() or "|" in rater or len(rater) > 100:
        raise ReviewError(f"rater name {rater!r}: expected 1-100 characters without '|'")
    token = new_token()
    store.add_rater(task, rater, hash_token(token))
    rebalance(store, task)
    return f"{base_url.rstrip('/')}/signin/{token}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Authenticator:
    """Resolves a request to a Principal, or None when it carries no valid credential."""

    def __init__(self, store: ReviewStore, admin_token: str):
        self.store = store
        self._admin_hash = hash_token(admin_token)
        # Admin browser sessions live in memory: a new admin token on restart should end them.
        self._admin_sessions: set[str] = set()

    def principal(self, request: Request) -> Principal | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if same(hash_token(auth[7:].strip()), self._admin_hash):
                return Principal("admin")
            return None
        admin_cookie = request.cookies.get(ADMIN_COOKIE)
        if admin_cookie and hash_token(admin_cookie) in self._admin_sessions:
            return Principal("admin")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            row = self.store.session(hash_token(cookie))
            if row is not None:
                return Principal("rater", row["task"], row["rater"], row["csrf"])
        return None

    def sign_in_rater(self, token: str) -> tuple[str, str, str] | None:
        """Exchange a sign-in token for (session cookie value, task, rater)."""
        found = self.store.rater_for_token(hash_token(token))
        if found is None:
            return None
        task, rater = found
        session = new_token()
        self.store.create_session(hash_token(session), task, rater, new_token())
        return session, task, rater

    def sign_in_admin(self, token: str) -> str | None:
        if not same(hash_token(token), self._admin_hash):
            return None
        session = new_token()
        self._admin_sessions.add(hash_token(session))
        return session
