"""Who may call a route: FastAPI dependencies, so no route repeats the check (`Depends(require_rater)`).

Each returns the signed-in `Principal` or raises 401 (not signed in) / 403 (signed in as someone else);
`app.py` turns those into the error page, or a JSON body under /api/.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from tunelab.review.auth import Principal

SIGN_IN_FIRST = "Sign in with your personal link first."


def require_rater(task: str, request: Request) -> Principal:
    """The rater signed in to the path's task."""
    return _signed_in(request.app.state.auth.rater(request, task))


def require_any_rater(request: Request, task: str | None = None) -> Principal:
    """A signed-in rater; a browser signed in to several tasks names one with ?task=."""
    return _signed_in(request.app.state.auth.rater(request, task))


def require_reader(task: str, request: Request) -> Principal:
    """The owner, or a rater of the path's task (what each may read is `Principal.may_read`'s decision)."""
    auth = request.app.state.auth
    return _signed_in(auth.admin(request) or auth.rater(request, task))


def require_owner(request: Request) -> Principal:
    """The task owner (admin session or API token); a signed-in rater gets 403, anyone else 401."""
    auth = request.app.state.auth
    p = auth.admin(request)
    if p is not None:
        return p
    if auth.rater(request, None) is not None or any(k.startswith("tunelab_review_s_") for k in request.cookies):
        raise HTTPException(403, "Not yours to see.")
    raise HTTPException(401, SIGN_IN_FIRST)


def _signed_in(p: Principal | None) -> Principal:
    if p is None:
        raise HTTPException(401, SIGN_IN_FIRST)
    return p
