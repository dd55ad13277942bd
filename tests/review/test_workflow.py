"""What a rater and an owner do beyond rating: guidelines, flags, edits with history, the dashboard,
calibration on gold items, removing a rater, the deadline."""

import json
import re

import pytest

from review_helpers import ADMIN, PAYLOAD, client_for, csrf_of, first_page, rate
from tunelab.review.auth import add_rater
from tunelab.review.errors import ReviewError
from tunelab.review.export import export_rows
from tunelab.review.store import Rating, ReviewStore
from tunelab.review.tasks import TaskSpec, create_task, handle, load_items_jsonl

BEARER = {"Authorization": f"Bearer {ADMIN}"}


def make(tmp_path, items, raters=("alice",), k=1, dims=("correctness", "humour"), **spec):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    db = tmp_path / "t.db"
    store = ReviewStore(db)
    create_task(store, TaskSpec("demo", list(dims), (1, 5), k, **spec), load_items_jsonl(path), "file:t")
    return db, {r: add_rater(store, "demo", r, "http://x").rsplit("/", 1)[1] for r in raters}


def items(n):
    return [{"id": f"i{j}", "input": f"Q{j}", "output": f"A{j}"} for j in range(n)]


def test_guidelines_first_and_one_click_away(tmp_path):
    db, tokens = make(tmp_path, items(2), guidelines="Read **carefully**.\n\n<script>alert(1)</script>",
                      dims=("tone",), descriptions={"tone": "Is the tone <friendly>?"})
    c = client_for(db, tokens["alice"])
    r = c.get("/rate/demo")
    assert r.headers["location"] == "/rate/demo/guidelines"  # before the first item
    page = c.get("/rate/demo/guidelines").text
    assert "<strong>carefully</strong>" in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Is the tone &lt;friendly&gt;?" in page
    url, html = first_page(c)
    assert 'href="/rate/demo/guidelines"' in html and "Is the tone &lt;friendly&gt;?" in html
    rate(c, url, html, "3")
    assert c.get("/rate/demo").headers["location"] != "/rate/demo/guidelines"  # only before the first item


def test_every_dimension_needs_a_description(tmp_path):
    with pytest.raises(ReviewError, match="--describe: dimension 'tone' needs a description"):
        make(tmp_path, items(1), dims=("tone",))
    with pytest.raises(ReviewError, match="'nope' is not one of the dimensions"):
        make(tmp_path, items(1), dims=("overall",), descriptions={"nope": "x"})


def test_outputs_render_markdown_safely_and_scroll(tmp_path):
    out = "# Title\n\n**bold** `x<y`\n\n```python\nprint('<b>')\n```\n" + PAYLOAD + "\n[go](javascript:alert(1))"
    db, tokens = make(tmp_path, [{"id": "i", "input": "Q", "output": out}], dims=("overall",))
    _, html = first_page(client_for(db, tokens["alice"]))
    assert "<strong>bold</strong>" in html and "<code>x&lt;y</code>" in html
    assert "<code class=\"language-python\">print('&lt;b&gt;')" in html
    assert PAYLOAD not in html and "&lt;script&gt;alert('pwned')&lt;/script&gt;" in html
    assert "href=\"javascript" not in html and "[go](javascript:alert(1))" in html  # left as text
    assert re.search(r"\.text \{[^}]*max-height: \d+rem; overflow: auto", html)  # long outputs scroll


def test_flag_with_reason_queue_and_undo(tmp_path):
    db, tokens = make(tmp_path, items(3), dims=("overall",))
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    assert c.post(url, data={"csrf": csrf_of(html), "action": "flag", "reason": "nonsense"}).status_code == 400
    r = c.post(url, data={"csrf": csrf_of(html), "action": "flag", "reason": "offensive", "note": "slur"})
    assert r.status_code == 303 and c.get("/rate/demo").headers["location"] != url  # moved on
    queue = c.get("/rate/demo/queue").text
    assert "flagged: Offensive" in queue and url in queue
    assert "You flagged this item: Offensive" in c.get(url).text
    assert [(r["state"], r["reason"], r["comment"]) for r in export_rows(ReviewStore(db), "demo")] == [
        ("flagged", "offensive", "slur")]
    c.post(url, data={"csrf": csrf_of(queue), "action": "undo", "back": "queue"})
    assert export_rows(ReviewStore(db), "demo") == []
    assert [r["state"] for r in export_rows(ReviewStore(db), "demo", history=True)] == ["flagged", "unflagged"]


def test_edit_keeps_history(tmp_path):
    db, tokens = make(tmp_path, items(2))
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    rate(c, url, html, "2", "3", comment="first")
    page = c.get(url).text
    assert 'value="2" data-key="2" required checked' in page and "first" in page
    rate(c, url, page, "4", "3", comment="second")
    latest = [(r["dimension"], r["score"], r["comment"]) for r in export_rows(ReviewStore(db), "demo")]
    assert latest == [("correctness", 4, "second"), ("humour", 3, "second")]
    hist = [(r["dimension"], r["score"], r["state"]) for r in export_rows(ReviewStore(db), "demo", history=True)]
    assert hist == [("correctness", 2, "replaced"), ("humour", 3, "replaced"),
                    ("correctness", 4, "rated"), ("humour", 3, "rated")]


def test_dashboard_progress_agreement_calibration_and_removal(tmp_path):
    gold = {"id": "g", "input": "Q", "output": "A", "gold": {"overall": 4}}
    db, tokens = make(tmp_path, items(4) + [gold], raters=("alice", "bob", "carol"), k=2, dims=("overall",))
    store = ReviewStore(db)
    # Every rater gets the gold item, on top of the K=2 split of the others.
    assert {r for i, r in store.assignments("demo") if i == "g"} == {"alice", "bob", "carol"}
    scores = {"alice": 4, "bob": 3, "carol": 5}
    for i, r in store.assignments("demo"):
        if r != "carol" or i == "g":
            store.submit("demo", [Rating(i, r, "overall", float(scores[r]))])
    c = client_for(db)
    d = c.get("/api/tasks/demo/dashboard", headers=BEARER).json()
    by = {p["rater"]: p for p in d["raters"]}
    assert by["alice"]["gold_accuracy"] == 1.0 and by["bob"]["gold_accuracy"] == 0.0
    assert by["carol"]["gold_n"] == 1 and by["carol"]["rated"] == 1
    # Bias against an independent count: alice vs the mean of the others on each item she shares.
    ratings = store.ratings("demo")
    offs = []
    for r in ratings:
        if r.rater == "alice":
            others = [o.score for o in ratings if o.item_id == r.item_id and o.rater != "alice"]
            if others:
                offs.append(r.score - sum(others) / len(others))
    assert by["alice"]["bias"] == pytest.approx(sum(offs) / len(offs))
    assert d["agreement"]["overall"]["percent_agreement"] == 0.0
    html = c.get("/admin/tasks/demo", headers=BEARER).text
    assert "100% of 1" in html and "0% of 1" in html
    # Removing carol keeps her answer; her open items go to the others.
    carol_open = {i for i, r in store.assignments("demo") if r == "carol"} - {"g"}
    r = c.post("/admin/tasks/demo/remove-rater", data={"rater": "carol"}, headers=BEARER)
    assert r.status_code == 303
    assert [x.score for x in store.ratings("demo", "carol")] == [5.0]
    assert all(r != "carol" for _, r in store.assignments("demo"))
    for i in carol_open:
        assert len([r for j, r in store.assignments("demo") if j == i]) == 2
    assert client_for(db).post(f"/signin/{tokens['carol']}").status_code == 401  # her link is dead
    assert {p["rater"]: p["active"] for p in c.get("/api/tasks/demo/status", headers=BEARER).json()["raters"]} == {
        "alice": True, "bob": True, "carol": False}


def test_owner_forms_need_csrf_with_a_cookie_session(tmp_path):
    from tunelab.review.auth import admin_link
    db, _ = make(tmp_path, items(2), raters=("alice", "bob"), dims=("overall",))
    c = client_for(db)
    c.post(admin_link(ReviewStore(db), "http://testserver").split("testserver", 1)[1])
    assert c.post("/admin/tasks/demo/remove-rater", data={"rater": "bob", "csrf": "forged"}).status_code == 403
    page = c.get("/admin/tasks/demo").text
    assert c.post("/admin/tasks/demo/remove-rater", data={"rater": "bob", "csrf": csrf_of(page)}).status_code == 303
    assert c.post("/admin/tasks/demo/remove-rater", data={"rater": "bob", "csrf": csrf_of(page)}).status_code == 400


def test_deadline_closes_answers(tmp_path):
    db, tokens = make(tmp_path, items(2), dims=("overall",))
    c = client_for(db, tokens["alice"])
    url, html = first_page(c)
    ReviewStore(db).set_deadline("demo", 1.0)  # long past
    r = rate(c, url, html, "3")
    assert r.status_code == 403 and "deadline" in r.text and ReviewStore(db).ratings("demo") == []
    assert "Deadline: 1970-01-01" in c.get(url).text


def test_rater_api_uses_handles(tmp_path):
    db, tokens = make(tmp_path, items(2), dims=("overall",))
    c = client_for(db, tokens["alice"])
    task = ReviewStore(db).task("demo")
    assert sorted(c.get("/api/me").json()["assignments"]) == sorted(handle(task, f"i{j}", "alice") for j in range(2))
