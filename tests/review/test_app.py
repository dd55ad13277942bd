"""The rating app: sign-in, blinding, escaping, CSRF and who may read what."""

import re

import pytest
from fastapi.testclient import TestClient

from review_helpers import ADMIN, PAYLOAD
from tunelab.review.app import create_app
from tunelab.review.store import ReviewStore
from tunelab.review.tasks import swapped


def client_for(db, token=None):
    c = TestClient(create_app(db, ADMIN), follow_redirects=False)
    if token:
        r = c.get(f"/signin/{token}")
        assert r.status_code == 303 and r.headers["location"] == "/rate/demo"
    return c


def csrf_of(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def first_page(c):
    r = c.get("/rate/demo")
    assert r.status_code == 303
    page = c.get(r.headers["location"])
    assert page.status_code == 200
    return r.headers["location"], page.text


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/rate/demo"), ("GET", "/rate/demo/0"), ("POST", "/rate/demo/0"), ("GET", "/api/me"),
    ("GET", "/api/tasks/demo/raters/alice"), ("GET", "/api/tasks/demo/status"), ("GET", "/api/tasks/demo/ratings"),
    ("GET", "/admin"),
])
def test_everything_needs_a_session_or_admin_token(make_task, method, path):
    db, _ = make_task()
    c = client_for(db)
    assert c.request(method, path).status_code == 401
    assert c.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    c.cookies.set("tunelab_review_session", "forged")
    assert c.request(method, path).status_code == 401


def test_bad_signin_link_is_rejected(make_task):
    db, _ = make_task()
    assert client_for(db).get("/signin/not-a-token").status_code == 401


def test_admin_token_reads_everything(make_task):
    db, _ = make_task()
    c = client_for(db)
    h = {"Authorization": f"Bearer {ADMIN}"}
    assert c.get("/api/tasks/demo/status", headers=h).json()["raters"][0]["assigned"] == 4
    assert c.get("/api/tasks/demo/raters/bob", headers=h).status_code == 200
    assert c.get("/admin", headers=h).status_code == 200


def test_output_is_escaped_and_csp_set(make_task):
    db, tokens = make_task()
    c = client_for(db, tokens["alice"])
    _, html = first_page(c)
    assert PAYLOAD not in html
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    # The only script is ours, and the CSP allows only its nonce.
    nonce = re.search(r"<script nonce=\"([^\"]+)\">", html).group(1)
    csp = c.get("/rate/demo", follow_redirects=True).headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    assert html.count("<script") == 1 and nonce


def test_csrf_required_on_form_posts(make_task):
    db, tokens = make_task()
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    form = {"dim_0": "4", "dim_1": "2", "comment": "ok", "action": "submit"}
    assert c.post(url, data=form).status_code == 403
    assert c.post(url, data={**form, "csrf": "forged"}).status_code == 403
    assert ReviewStore(db).ratings("demo") == []
    assert c.post(url, data={**form, "csrf": csrf_of(html)}).status_code == 303
    got = {(r.dimension, r.score) for r in ReviewStore(db).ratings("demo")}
    assert got == {("correctness", 4.0), ("humour", 2.0)}


def test_bad_rating_is_a_400_and_server_keeps_going(make_task):
    db, tokens = make_task()
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    for bad in ("9", "x", ""):
        r = c.post(url, data={"dim_0": bad, "dim_1": "2", "csrf": csrf_of(html), "action": "submit"})
        assert r.status_code == 400
    assert c.get(url).status_code == 200


def test_rater_cannot_read_other_raters(make_task):
    db, tokens = make_task(n=6, raters=("alice", "bob"), k=1)
    alice, bob = client_for(db, tokens["alice"]), client_for(db, tokens["bob"])
    # bob rates an item with a comment alice must never see.
    url, html = first_page(bob)
    bob.post(url, data={"dim_0": "5", "dim_1": "5", "comment": "BOBSECRET", "csrf": csrf_of(html), "action": "submit"})
    assert alice.get("/api/tasks/demo/raters/bob").status_code == 403
    assert alice.get("/api/tasks/demo/ratings").status_code == 403
    assert alice.get("/api/tasks/demo/status").status_code == 403
    me = alice.get("/api/me").json()
    assert me["rater"] == "alice" and me["ratings"] == []
    # With K=1 the items are split: alice cannot open bob's items, even by position.
    bob_items = set(bob.get("/api/me").json()["assignments"])
    alice_items = set(me["assignments"])
    assert bob_items and alice_items and not bob_items & alice_items
    for pos in bob_items:
        assert alice.get(f"/rate/demo/{pos}").status_code == 403
        r = alice.post(f"/rate/demo/{pos}", data={"dim_0": "1", "dim_1": "1", "csrf": "x", "action": "submit"})
        assert r.status_code == 403
    assert "BOBSECRET" not in alice.get(f"/rate/demo/{min(alice_items)}").text


def test_other_raters_ratings_never_shown(make_task):
    db, tokens = make_task(n=2, k=2)
    alice, bob = client_for(db, tokens["alice"]), client_for(db, tokens["bob"])
    url, html = first_page(bob)
    bob.post(url, data={"dim_0": "5", "dim_1": "1", "comment": "BOBSECRET", "csrf": csrf_of(html), "action": "submit"})
    page = alice.get(url).text
    assert "BOBSECRET" not in page and " checked" not in page  # alice sees no pre-filled answers


def test_pairwise_blinding_and_stable_randomized_order(make_task):
    raters = tuple(f"r{i}" for i in range(6))
    db, tokens = make_task(n=6, raters=raters, k=6, pairwise=True, dims=("overall",))
    store = ReviewStore(db)
    task = store.task("demo")
    orders = set()
    for rater in raters[:3]:
        c = client_for(db, tokens[rater])
        for pos in range(6):
            html = c.get(f"/rate/demo/{pos}").text
            assert "SECRETVARIANT" not in html and PAYLOAD not in html
            strip = lambda t: re.sub(r'nonce="[^"]+"', "", t)  # noqa: E731
            assert strip(c.get(f"/rate/demo/{pos}").text) == strip(html)  # stable on reload
            left_is_a = html.index(f"answer A{pos}") < html.index(f"answer B{pos}")
            assert left_is_a == (not swapped(task, f"item{pos}", rater))
            orders.add(left_is_a)
        # Choosing "left" must be stored as whichever variant was on the left.
        url, html = first_page(c)
        pos = int(url.rsplit("/", 1)[1])
        c.post(url, data={"dim_0": "left", "csrf": csrf_of(html), "action": "submit"})
        got = [r for r in store.ratings("demo", rater)][0]
        assert got.preference == ("B" if swapped(task, f"item{pos}", rater) else "A")
        # ...and the rater's own API answer speaks of sides, not variants.
        assert c.get("/api/me").json()["ratings"][0]["preference"] == "left"
    assert orders == {True, False}


def test_skip_moves_on(make_task):
    db, tokens = make_task(n=2, raters=("alice",), k=1)
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    assert c.post(url, data={"csrf": csrf_of(html), "action": "skip"}).status_code == 303
    url2, _ = first_page(c)
    assert url2 != url
