"""The UI's real test: Debian's Chromium through Playwright, keyboard only once signed in.

One session end to end: a rater clicks her link on a page of another site (as from
webmail), reads the guidelines, rates, goes back and edits, skips, flags, undoes the skip
and finishes; the owner's dashboard shows it and its export button gives exactly that,
with history. No skip: if the browser cannot start the test fails (run scripts/ensure-browser.sh).
Set TUNELAB_SCREENSHOTS=docs/img to refresh the docs' screenshots.
"""

import csv
import io
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import sync_playwright

from test_durability import free_port, start_server
from tunelab.review.auth import add_rater, admin_link
from tunelab.review.store import Rating, ReviewStore
from tunelab.review.tasks import TaskSpec, create_task, load_items_jsonl, rater_order

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
GUIDELINES = """Rate each **joke** as a reader would.

- *Correctness*: facts about the topic are right.
- *Humour*: would you smile?

<script>window.pwned = 1</script>

```
code blocks stay <b>plain</b>
```
"""
ITEMS = [
    {"id": "db", "input": "Write a one-line joke about databases.",
     "output": "I told a joke about SQLite, but it didn't **commit**. <b>not bold</b><img src=x onerror=\"window.pwned=2\">"},
    {"id": "cc", "input": "Write a one-line joke about compilers.", "output": "Compilers: we don't judge, we parse."},
    {"id": "cache", "input": "Write a one-line joke about caches.", "output": "Cache me if you can."},
    {"id": "regex", "input": "Write a one-line joke about regexes.",
     "output": "```\n^(a+)+$\n```\nNow you have two problems."},
    {"id": "gold", "input": "Write a one-line joke about DNS.", "output": "It's always DNS.",
     "gold": {"correctness": 5, "humour": 4}},
]


def mail_server(link):
    """Another site (another host name, so another *site* for SameSite) showing the rater's link."""
    body = f'<!doctype html><title>Mail</title><p>Hi Alice, <a id="link" href="{link}">start rating</a>.</p>'.encode()

    class Mail(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Mail)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_rater_session_from_another_site_and_owner_dashboard(tmp_path):
    db = tmp_path / "tunelab.db"
    store = ReviewStore(db)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    create_task(store, TaskSpec("jokes", ["correctness", "humour"], (1, 5), 2, guidelines=GUIDELINES),
                load_items_jsonl(path), "file:test")
    port = free_port()
    link = add_rater(store, "jokes", "alice", f"http://127.0.0.1:{port}")
    add_rater(store, "jokes", "bob", f"http://127.0.0.1:{port}")
    store.submit("jokes", [Rating(i["id"], "bob", d, s) for i in ITEMS for d, s in (("correctness", 4), ("humour", 2))])
    task = store.task("jokes")
    order = [item for _, item in rater_order(store, task, "alice")]  # alice's own shuffled order
    shots = os.environ.get("TUNELAB_SCREENSHOTS")
    mail = mail_server(link)
    proc = start_server(db, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            keys = page.keyboard

            def press(key):  # a key that loads a new page
                with page.expect_navigation():
                    keys.press(key)

            def focused(selector):  # autofocus lands a moment after load: wait before typing
                page.wait_for_function("s => document.activeElement === document.querySelector(s)", arg=selector)

            def at_item(n):
                assert f"Item {n} of 5" in page.inner_text("header"), page.inner_text("body")

            # Found 1: the link clicked on another site signs her in.
            page.goto(f"http://localhost:{mail.server_address[1]}/mail.html")
            with page.expect_navigation():
                page.click("#link")
            assert "as alice" in page.inner_text("main")
            focused("#signin")
            press("Enter")
            assert "Guidelines" in page.inner_text("h1"), page.url + page.inner_text("body")
            assert page.locator("#guidelines strong").inner_text() == "joke"  # Markdown, rendered
            assert "<script>" in page.inner_text("#guidelines")  # raw HTML shown as text, never run
            assert "Is it funny" in page.inner_text("dl.dims")
            if shots:
                page.screenshot(path=f"{shots}/review-guidelines.png", full_page=True)
            focused("#begin")
            press("Enter")

            def item_page(n, item_id):
                at_item(n)
                assert page.inner_text("#input") == next(i["input"] for i in ITEMS if i["id"] == item_id)

            item_page(1, order[0])
            # Focus sits on the question, not on an unchosen answer that would look chosen.
            assert page.evaluate("document.activeElement.tagName") == "FIELDSET"
            keys.press("4")
            keys.press("2")
            if shots:
                page.screenshot(path=f"{shots}/rater-page.png", full_page=True)
            press("Enter")
            item_page(2, order[1])
            press("p")  # back to item 1: her answers are there; change correctness 4 -> 5
            item_page(1, order[0])
            assert page.is_checked("#dim-0 input[value='4']") and page.is_checked("#dim-1 input[value='2']")
            keys.press("5")
            press("Enter")
            item_page(2, order[1])
            press("s")  # skip item 2
            item_page(3, order[2])
            keys.press("f")  # flag item 3: broken input
            press("1")
            item_page(4, order[3])
            keys.press("3")
            keys.press("3")
            press("Enter")
            item_page(5, order[4])
            keys.press("2")
            keys.press("2")
            press("Enter")
            # The queue is empty but not "all done": the skipped and flagged items are one key away.
            assert "rated 3 of 5" in page.inner_text("#summary")
            assert "Item 2 — skipped" in page.inner_text("#aside") and "Broken input" in page.inner_text("#aside")
            focused("#aside a")
            press("Enter")  # the first set-aside item, focused: item 2
            item_page(2, order[1])
            assert "You skipped this item" in page.inner_text("#state")
            press("u")  # undo the skip
            item_page(2, order[1])
            keys.press("4")
            keys.press("4")
            press("Enter")
            assert "rated 4 of 5" in page.inner_text("#summary")
            assert page.evaluate("window.pwned") is None

            # The owner's dashboard reflects all of it.
            page.goto(admin_link(ReviewStore(db), f"http://127.0.0.1:{port}"))
            focused("#signin")
            press("Enter")
            with page.expect_navigation():
                page.click("text=jokes")
            alice = page.locator("#raters tr", has_text="alice").inner_text().split("\t")
            assert alice[1:6] == ["5", "4", "0", "1", "0"], alice  # assigned, rated, skipped, flagged, left
            gold_right = {"correctness": 5, "humour": 4}
            mine = {order[0]: (5, 2), order[1]: (4, 4), order[3]: (3, 3), order[4]: (2, 2)}
            if "gold" in mine:
                right = sum(a == gold_right[d] for a, d in zip(mine["gold"], ("correctness", "humour")))
                assert alice[7] == f"{100 * right / 2:.0f}% of 2"
            else:  # she flagged the gold item instead of rating it
                assert alice[7] == "–"
            bias = sum(a - b for v in mine.values() for a, b in zip(v, (4, 2))) / 8
            assert alice[8] == f"{bias:+.2f}"
            assert "Broken input" in page.inner_text("#flags") and order[2] in page.inner_text("#flags")
            assert page.locator("#agreement tr", has_text="humour").inner_text().split("\t")[1] == "4"
            if shots:
                page.screenshot(path=f"{shots}/review-dashboard.png", full_page=True)
            with page.expect_download() as got:
                page.click("#export-history")
            history = list(csv.DictReader(io.StringIO(open(got.value.path(), encoding="utf-8").read())))
            browser.close()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mail.shutdown()
    # The export holds exactly what was done, in order, with the replaced answers.
    got = [(r["item_id"], r["dimension"], r["score"], r["state"], r["reason"]) for r in history if r["rater"] == "alice"]
    one, two, three, four, five = order
    assert got == [
        (one, "correctness", "4", "replaced", ""), (one, "humour", "2", "replaced", ""),
        (one, "correctness", "5", "rated", ""), (one, "humour", "2", "rated", ""),
        (two, "", "", "skipped", ""), (three, "", "", "flagged", "broken"),
        (four, "correctness", "3", "rated", ""), (four, "humour", "3", "rated", ""),
        (five, "correctness", "2", "rated", ""), (five, "humour", "2", "rated", ""),
        (two, "", "", "unskipped", ""),
        (two, "correctness", "4", "rated", ""), (two, "humour", "4", "rated", ""),
    ]
    assert all(float(r["seconds"]) >= 0 for r in history if r["rater"] == "alice" and r["state"] == "rated")
