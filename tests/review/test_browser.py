"""The UI's real test: Debian's Chromium through Playwright, keyboard only.

No skip: if the browser cannot start the test fails (run scripts/ensure-browser.sh).
Set TUNELAB_SCREENSHOT=docs/img/rater-page.png to refresh the docs screenshot."""

import json
import os
import signal

from playwright.sync_api import sync_playwright

from review_helpers import write_items
from test_durability import free_port, start_server
from tunelab.review import longformat
from tunelab.review.auth import add_rater
from tunelab.review.store import ReviewStore
from tunelab.review.tasks import TaskSpec, create_task, load_items_jsonl

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_rater_rates_two_items_with_keyboard_only(tmp_path):
    db = tmp_path / "tunelab.db"
    store = ReviewStore(db)
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "joke-1", "input": "Write a one-line joke about databases.",
         "output": "I told a joke about SQLite, but it didn't commit. <b>not bold</b>"},
        {"id": "joke-2", "input": "Write a one-line joke about compilers.", "output": "Compilers: we don't judge, we parse."},
        {"id": "joke-3", "input": "Write a one-line joke about caches.", "output": "Cache me if you can."},
    ]) + "\n")
    create_task(store, TaskSpec("jokes", ["correctness", "humour"], (1, 5), 1), load_items_jsonl(path), "file:test")
    port = free_port()
    link = add_rater(store, "jokes", "alice", f"http://127.0.0.1:{port}")
    proc = start_server(db, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(link)
            page.wait_for_selector("#rating")
            assert page.inner_text("#output-1").endswith("<b>not bold</b>")  # shown as text, not markup
            shot = os.environ.get("TUNELAB_SCREENSHOT")
            page.keyboard.press("4")  # correctness = 4, focus moves to humour
            page.keyboard.press("2")  # humour = 2
            page.keyboard.press("ArrowRight")  # humour 2 -> 3
            if shot:
                page.screenshot(path=shot, full_page=True)
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert "item 2 of 3" in page.inner_text("header")
            page.keyboard.press("5")  # correctness = 5, focus moves to humour
            page.keyboard.press("ArrowUp")  # back to correctness
            page.keyboard.press("ArrowLeft")  # correctness 5 -> 4
            page.keyboard.press("ArrowDown")  # humour
            page.keyboard.press("1")  # humour = 1
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert "item 3 of 3" in page.inner_text("header")
            assert page.get_attribute("#progress", "value") == "2"
            browser.close()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = [json.loads(line) for line in longformat.dumps(ReviewStore(db).ratings("jokes"), "jsonl").splitlines()]
    assert [(r["item_id"], r["rater"], r["dimension"], r["score"]) for r in rows] == [
        ("joke-1", "alice", "correctness", 4), ("joke-1", "alice", "humour", 3),
        ("joke-2", "alice", "correctness", 4), ("joke-2", "alice", "humour", 1)]
