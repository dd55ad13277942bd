"""The rating app: sign-in, blinding, escaping, CSRF and who may read what."""

import re

import pytest
from fastapi.testclient import TestClient

from review_helpers import ADMIN, PAYLOAD, client_for, csrf_of, first_page, rate
from tunelab.review.app import create_app
from tunelab.review.store import ReviewStore
from tunelab.review.tasks import handle, swapped


@pytest.mark.parametrize("method,path", [
    ("GET", "/"), ("GET", "/rate/demo"), ("GET", "/rate/demo/0"), ("POST", "/rate/demo/0"), ("GET", "/api/me"),
    ("GET", "/api/tasks/demo/raters/alice"), ("GET", "/api/tasks/demo/status"), ("GET", "/api/tasks/demo/ratings"),
    ("GET", "/admin"), ("GET", "/admin/tasks/demo"), ("GET", "/admin/tasks/demo/export.csv"),
])
def test_everything_needs_a_session_or_admin_token(make_task, method, path):
    db, _ = make_task()
    c = client_for(db)
    assert c.request(method, path).status_code == 401
    assert c.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    c.cookies.set("tunelab_review_admin", "forged")
    assert c.request(method, path).status_code == 401


def test_bad_signin_link_is_rejected(make_task):
    db, _ = make_task()
    c = client_for(db)
    assert c.get("/signin/not-a-token").status_code == 401
    assert c.post("/signin/not-a-token").status_code == 401


def test_admin_token_reads_everything(make_task):
    db, _ = make_task()
    c = client_for(db)
    h = {"Authorization": f"Bearer {ADMIN}"}
    assert c.get("/api/tasks/demo/status", headers=h).json()["raters"][0]["assigned"] == 4
    assert c.get("/api/tasks/demo/raters/bob", headers=h).status_code == 200
    page = c.get("/admin", headers=h)
    assert page.status_code == 200
    # Found 5: the item count, not the dict method `items`.
    assert "(4 items)" in page.text and "built-in method" not in page.text


def test_output_is_escaped_and_csp_set(make_task):
    db, tokens = make_task()
    c = client_for(db, tokens["alice"])
    _, html = first_page(c)
    assert PAYLOAD not in html
    assert "&lt;script&gt;alert('pwned')&lt;/script&gt;" in html
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
    for bad in ("9", "x", "", "²", "٣"):  # '²' and Arabic-Indic 3 pass str.isdigit() but are not ratings
        assert rate(c, url, html, bad, "2").status_code == 400
    assert c.get(url).status_code == 200


def test_no_unhandled_errors_and_json_errors_on_the_api(make_task, caplog):
    db, tokens = make_task()
    c = client_for(db, tokens["alice"])
    assert c.get("/rate/demo/99999999999999999999").status_code == 403
    assert c.post("/rate/demo/99999999999999999999", data={"csrf": "x"}).status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN}"}
    for path in ("/api/tasks/nope/raters/x", "/api/tasks/nope/status", "/api/tasks/nope/ratings",
                 "/api/tasks/demo/raters/nobody"):
        r = c.get(path, headers=admin)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", path
        assert "nope" in r.json()["detail"] or "nobody" in r.json()["detail"]
    assert c.get("/admin/tasks/nope", headers=admin).status_code == 404
    assert c.get("/admin/tasks/demo/export.xml", headers=admin).status_code == 400
    # A bug still gives a page, and is logged.
    app = c.app
    app.state.store.task = None  # break the store: every task lookup now raises TypeError
    with caplog.at_level("ERROR", logger="tunelab.review"):
        r = c.get("/api/tasks/demo/status", headers=admin)
    assert r.status_code == 500 and "Traceback" in caplog.text and "/api/tasks/demo/status" in caplog.text


def test_rater_cannot_read_other_raters(make_task):
    db, tokens = make_task(n=6, raters=("alice", "bob"), k=1)
    alice, bob = client_for(db, tokens["alice"]), client_for(db, tokens["bob"])
    # bob rates an item with a comment alice must never see.
    url, html = first_page(bob)
    rate(bob, url, html, "5", "5", comment="BOBSECRET")
    assert alice.get("/api/tasks/demo/raters/bob").status_code == 403
    assert alice.get("/api/tasks/demo/ratings").status_code == 403
    assert alice.get("/api/tasks/demo/status").status_code == 403
    assert alice.get("/admin/tasks/demo").status_code == 403
    me = alice.get("/api/me").json()
    assert me["rater"] == "alice" and me["ratings"] == []
    # With K=1 the items are split: alice cannot open bob's items, by his handles or hers for them.
    store = ReviewStore(db)
    task = store.task("demo")
    bob_items = [i for i, _ in store.assignments("demo", "bob")]
    assert bob_items and set(bob_items).isdisjoint(i for i, _ in store.assignments("demo", "alice"))
    for item in bob_items:
        for h in (handle(task, item, "bob"), handle(task, item, "alice")):
            assert alice.get(f"/rate/demo/{h}").status_code == 403
            assert alice.post(f"/rate/demo/{h}", data={"dim_0": "1", "dim_1": "1", "csrf": "x",
                                                       "action": "submit"}).status_code == 403
    assert "BOBSECRET" not in alice.get(f"/rate/demo/{me['assignments'][0]}").text


def test_other_raters_ratings_never_shown(make_task):
    db, tokens = make_task(n=2, k=2)
    alice, bob = client_for(db, tokens["alice"]), client_for(db, tokens["bob"])
    url, html = first_page(bob)
    rate(bob, url, html, "5", "1", comment="BOBSECRET")
    item = ReviewStore(db).ratings("demo")[0].item_id
    page = alice.get(f"/rate/demo/{handle(ReviewStore(db).task('demo'), item, 'alice')}").text
    assert "BOBSECRET" not in page and " checked" not in page  # alice sees no pre-filled answers


def test_pairwise_blinding_and_stable_randomized_sides(make_task):
    raters = tuple(f"r{i}" for i in range(6))
    db, tokens = make_task(n=6, raters=raters, k=6, pairwise=True, dims=("overall",))
    store = ReviewStore(db)
    task = store.task("demo")
    sides = set()
    for rater in raters[:3]:
        c = client_for(db, tokens[rater])
        for pos in range(6):
            url = f"/rate/demo/{handle(task, f'item{pos}', rater)}"
            html = c.get(url).text
            assert "SECRETVARIANT" not in html and PAYLOAD not in html and f"item{pos}" not in html
            strip = lambda t: re.sub(r'nonce="[^"]+"', "", t)  # noqa: E731
            assert strip(c.get(url).text) == strip(html)  # stable on reload
            left_is_a = html.index(f"answer A{pos}") < html.index(f"answer B{pos}")
            assert left_is_a == (not swapped(task, f"item{pos}", rater))
            sides.add(left_is_a)
        # Choosing "left" must be stored as whichever variant was on the left.
        url, html = first_page(c)
        c.post(url, data={"dim_0": "left", "csrf": csrf_of(html), "action": "submit"})
        got = store.ratings("demo", rater)[0]
        assert got.preference == ("B" if swapped(task, got.item_id, rater) else "A")
        # ...and the rater's own API answer speaks of sides and handles, not variants and ids.
        mine = c.get("/api/me").json()["ratings"][0]
        assert mine["preference"] == "left" and mine["item"] == url.rsplit("/", 1)[1]
    assert sides == {True, False}


def test_each_rater_gets_an_own_shuffled_order(make_task):
    """Found 2: multi-variant rating tasks showed item::v1, item::v2 in the same fixed order to everyone."""
    raters = tuple(f"r{i}" for i in range(5))
    db, tokens = make_task(n=12, raters=raters, k=5, variants=("base", "lora"))
    orders = []
    for rater in raters:
        c = client_for(db, tokens[rater])
        seen = []
        for _ in range(24):
            url, html = first_page(c)
            assert "base" not in url + html and "lora" not in url + html and "::" not in url + html
            ref = re.search(r"answer (\d+) (\w+)", html)
            seen.append(ref.group(0))
            c.post(url, data={"csrf": csrf_of(html), "action": "skip"})
        orders.append(seen)
        assert sorted(seen) == sorted(f"answer {i} {v}" for i in range(12) for v in ("x", "y"))
    assert len({tuple(o) for o in orders}) == len(raters)
    # Position parity no longer tells the variant: both variants come first in some pair of the order.
    firsts = {o[i].split()[2] for o in orders for i in range(0, 24, 2)}
    assert firsts == {"x", "y"}


def test_adding_a_rater_keeps_work_in_progress(make_task):
    """Found 3: a rebalance must not take away an item a rater has open."""
    from collections import Counter

    from tunelab.review.auth import add_rater
    db, tokens = make_task(n=2, raters=("alice",), k=1)
    alice = client_for(db, tokens["alice"])
    url, html = first_page(alice)
    rate(alice, url, html, "3", "3")
    url, html = first_page(alice)  # alice opens her second item ...
    add_rater(ReviewStore(db), "demo", "bob", "http://x")  # ... the owner adds bob, least loaded ...
    assert rate(alice, url, html, "4", "4").status_code == 303  # ... and her answers still land
    assert len(ReviewStore(db).ratings("demo", "alice")) == 4
    assert Counter(r for _, r in ReviewStore(db).assignments("demo")) == {"alice": 2}  # bob waits for new items


def test_pairwise_prompt_comparison_shows_both_inputs(tmp_path):
    """Found 4: comparing two prompts, B's rendered input must be shown too."""
    import json

    from tunelab.review.auth import add_rater
    from tunelab.review.tasks import TaskSpec, create_task, load_items_jsonl
    p = tmp_path / "i.jsonl"
    p.write_text(json.dumps({"id": "q", "input": "FEWSHOT prompt", "input_b": "ZEROSHOT prompt", "output_a": "a",
                             "output_b": "b"}) + "\n")
    db = tmp_path / "t.db"
    store = ReviewStore(db)
    create_task(store, TaskSpec("demo", ["overall"], (1, 5), 1, True), load_items_jsonl(p), "file:t")
    token = add_rater(store, "demo", "alice", "http://x").rsplit("/", 1)[1]
    c = client_for(db, token)
    _, html = first_page(c)
    assert "FEWSHOT prompt" in html and "ZEROSHOT prompt" in html
    left_a = not swapped(store.task("demo"), "q", "alice")
    assert (html.index("FEWSHOT") < html.index("ZEROSHOT")) == left_a


def test_skip_is_undoable_and_not_counted_done(make_task):
    """Found 8: a skip moves on, can be undone, is not 'finished', and is in the export."""
    db, tokens = make_task(n=2, raters=("alice",), k=1)
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    assert c.post(url, data={"csrf": csrf_of(html), "action": "skip"}).status_code == 303
    url2, html2 = first_page(c)
    assert url2 != url
    rate(c, url2, html2, "2", "2")
    done = c.get("/rate/demo").text
    assert "rated 1 of 2" in done and "skipped" in done and url.rsplit("/", 1)[1] in done
    from tunelab.review.export import export_rows
    assert [r["state"] for r in export_rows(ReviewStore(db), "demo")].count("skipped") == 1
    page = c.get(url).text
    assert "You skipped this item" in page
    assert c.post(url, data={"csrf": csrf_of(page), "action": "undo"}).status_code == 303
    assert c.get("/rate/demo").headers["location"] == url  # back in the queue
    assert [r["state"] for r in export_rows(ReviewStore(db), "demo")].count("skipped") == 0


def test_sessions_signin_links_and_logout(make_task, monkeypatch):
    """Found 7: bounded links, expiring sessions, logout, one session per task per browser."""
    import time as _time

    from tunelab.review import auth
    db, tokens = make_task(raters=("alice",), k=1)
    c = client_for(db, tokens["alice"])
    # Clicking the link again while signed in goes straight in, without spending a use.
    assert c.get(f"/signin/{tokens['alice']}").headers["location"] == "/rate/demo"
    for _ in range(auth.LINK_USES - 1):
        client_for(db, tokens["alice"])
    fresh = client_for(db)
    assert fresh.get(f"/signin/{tokens['alice']}").status_code == 401  # used up
    assert fresh.post(f"/signin/{tokens['alice']}").status_code == 401
    # Sign out ends the session server-side: the old cookie no longer works.
    cookie = dict(c.cookies)
    page = c.get("/rate/demo/guidelines").text
    assert c.post("/rate/demo/logout", data={"csrf": csrf_of(page)}).status_code == 200
    replay = client_for(db)
    for k, v in cookie.items():
        replay.cookies.set(k, v)
    assert replay.get("/rate/demo/guidelines").status_code == 401
    # Sessions expire.
    link = auth.add_rater(ReviewStore(db), "demo", "alice", "http://x").rsplit("/", 1)[1]
    s = client_for(db, link)
    assert s.get("/rate/demo/guidelines").status_code == 200
    real = _time.time
    monkeypatch.setattr(_time, "time", lambda: real() + auth.SESSION_S + 1)
    assert s.get("/rate/demo/guidelines").status_code == 401


def test_links_expire(make_task, monkeypatch):
    import time as _time

    from tunelab.review import auth
    db, tokens = make_task(raters=("alice",), k=1)
    real = _time.time
    monkeypatch.setattr(_time, "time", lambda: real() + auth.LINK_DAYS * 86400 + 1)
    assert client_for(db).get(f"/signin/{tokens['alice']}").status_code == 401


def test_signin_post_must_come_from_our_page(make_task):
    db, tokens = make_task()
    c = client_for(db)
    r = c.post(f"/signin/{tokens['alice']}", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and not c.cookies


def test_several_tasks_in_one_browser(make_task, tmp_path):
    from tunelab.review.auth import add_rater
    from tunelab.review.tasks import TaskSpec, create_task, load_items_jsonl
    db, tokens = make_task(raters=("alice",), k=1)
    store = ReviewStore(db)
    create_task(store, TaskSpec("second", ["overall"], (1, 5), 1), load_items_jsonl(tmp_path / "demo.jsonl"),
                "file:t")
    token2 = add_rater(store, "second", "alice", "http://x").rsplit("/", 1)[1]
    c = client_for(db, tokens["alice"])
    assert c.post(f"/signin/{token2}").headers["location"] == "/rate/second"
    assert c.get("/rate/demo/guidelines").status_code == 200
    assert c.get("/rate/second/guidelines").status_code == 200
    assert c.get("/api/me", params={"task": "demo"}).json()["task"] == "demo"


def test_cookies_secure_over_https_and_lax(make_task):
    db, tokens = make_task()
    c = TestClient(create_app(db, ADMIN), base_url="https://review.example", follow_redirects=False)
    r = c.post(f"/signin/{tokens['alice']}")
    cookie = r.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    plain = client_for(db).post(f"/signin/{tokens['bob']}").headers["set-cookie"].lower()
    assert "secure" not in plain


def test_admin_link_is_single_use_and_not_the_api_token(make_task):
    from tunelab.review.auth import admin_link
    db, _ = make_task()
    c = client_for(db)
    assert c.get(f"/admin/signin/{ADMIN}").status_code == 401  # the API token is no sign-in link
    link = admin_link(ReviewStore(db), "http://testserver").split("testserver", 1)[1]
    assert c.get(link).status_code == 200
    r = c.post(link)
    assert r.status_code == 303 and c.get("/admin").status_code == 200
    assert client_for(db).post(link).status_code == 401  # spent
    page = c.get("/admin").text
    assert c.post("/admin/logout", data={"csrf": "forged"}).status_code == 403
    assert c.post("/admin/logout", data={"csrf": csrf_of(page)}).status_code == 200
    assert c.get("/admin").status_code == 401


def test_csv_export_neutralises_formulas(make_task):
    """Found 9: a comment a spreadsheet would run is exported with a leading apostrophe (OWASP)."""
    import csv
    import io

    from tunelab.review.export import dumps, export_rows
    db, tokens = make_task(n=1, raters=("alice",), k=1)
    c = client_for(db, tokens["alice"])
    for evil in ("=1+1", "+SUM(A1)", "-2+3", "@cmd", "\tx", "\rx"):
        url, html = first_page(c) if not ReviewStore(db).ratings("demo") else (url, c.get(url).text)
        rate(c, url, html, "3", "3", comment=evil)
        row = next(csv.DictReader(io.StringIO(dumps(export_rows(ReviewStore(db), "demo"), "csv"))))
        assert row["comment"] == "'" + evil, (evil, row)
    # JSONL keeps the text as it was.
    import json
    assert json.loads(dumps(export_rows(ReviewStore(db), "demo"), "jsonl").splitlines()[0])["comment"] == "\rx"
