"""The report in a real browser (Debian's Chromium through Playwright): the per-item
grid's filters, escaping of model output, judge reasoning on expand, and plots for 12
variants. No skip: if the browser cannot start the test fails.
Set TUNELAB_SCREENSHOT_DIR=docs/img to refresh the screenshots in docs/evaluation.md."""

from __future__ import annotations

import json
import os
import zlib

from playwright.sync_api import sync_playwright

from tunelab.evals.config import EvalConfig
from tunelab.evals.fake_server import FakeOpenAI
from tunelab.evals.report import _flags, build_report
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Peru": "Lima",
            "Japan": "Tokyo", "Kenya": "Nairobi", "Chile": "Santiago"}


def model(body):
    """Twelve 'models' that know different capitals; one answers in markup; the judge cannot read one country."""
    last = body["messages"][-1]["content"]
    if any("[Assistant's answer]" in m["content"] for m in body["messages"]):   # the judge, or its follow-up
        last = body["messages"][1]["content"]
        if "Kenya" in last:
            return "Hmm, hard to say."
        good = any(city in last.split("[Assistant's answer]")[1] for city in CAPITALS.values())
        return json.dumps({"reasoning": "names the capital" if good else "wrong city", "score": 9 if good else 2})
    country = next(c for c in CAPITALS if c in last)
    if country == "Chile" and body["model"] == "m3":
        return "<img src=x onerror=alert(1)>Santiago"
    known = country in ("France", "Germany") or zlib.crc32(f"{body['model']}{country}{len(last)}".encode()) % 4 != 0
    return CAPITALS[country] if known else "I don't know"


def test_report_grid_filters_escapes_and_plots_in_chromium(tmp_path):
    shots = os.environ.get("TUNELAB_SCREENSHOT_DIR")
    db = tmp_path / "r.db"
    with FakeOpenAI(model) as srv:
        cfg = EvalConfig.from_dict({
            "description": "capitals, 3 prompts x 4 models",
            "dataset": [{"id": c.lower(), "country": c, "reference": city} for c, city in CAPITALS.items()],
            "prompts": [{"id": "terse", "template": "{{ country }}?"},
                        {"id": "plain", "template": "Capital of {{ country }}?"},
                        {"id": "polite", "template": "Please name the capital city of {{ country }}."}],
            "providers": [{"id": f"model-{k}", "base_url": srv.base_url, "model": f"m{k}",
                           "price": {"input_per_1m": 0.1 * k, "output_per_1m": 0.4 * k}} for k in range(4)],
            "metrics": ["exact_match", "rouge_l"],
            "judges": [{"id": "quality", "type": "rubric", "provider": "model-0", "threshold": 7}],
            "retry": {"max_retries": 0},
        }, source=str(tmp_path / "eval.yaml"), base_dir=tmp_path)
        run = run_eval(cfg, db).run_id
    with Store(db) as store:
        rows = store.results(run)
        page_html = build_report(store, [run])
    (tmp_path / "report.html").write_text(page_html, encoding="utf-8")
    by_item: dict[str, list] = {}
    for r in rows:
        by_item.setdefault(r.item_id, []).append(r)
    expected = {mode: sum(_flags(cells)[i] for cells in by_item.values())
                for i, mode in enumerate(["disagree", "fail", "error"])}
    assert 0 < expected["disagree"] < 8 and expected["error"] == 1   # Kenya: the judge could not be read

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto((tmp_path / "report.html").as_uri())
        count = page.locator(".filters .count")
        assert count.inner_text() == "8 of 8 items"
        # Twelve variant columns, and the model's markup is text, not an element.
        assert page.locator(".grid thead th").count() == 3 + 12
        assert page.locator(".grid img").count() == 0
        assert "<img src=x onerror=alert(1)>Santiago" in page.locator(".grid").inner_text()
        # Judge reasoning opens on expand.
        first = page.locator(".grid tbody tr").first.locator("details").first
        assert not first.locator("b").first.is_visible()
        first.locator("summary").click()
        assert "quality" in first.inner_text() and first.locator("b").first.is_visible()
        for mode, n in expected.items():
            page.select_option(".filters .mode", mode)
            assert count.inner_text() == f"{n} of 8 items"
            assert page.locator(".grid tbody tr:visible").count() == n
        page.select_option(".filters .mode", "error")
        assert page.locator(".grid tbody tr:visible td").first.inner_text() == "kenya"
        assert "unparsed" in page.locator(".grid tbody tr:visible").inner_text()
        if shots:
            page.select_option(".filters .mode", "disagree")
            page.locator(".grid tbody tr:visible").nth(1).locator("details").nth(1).locator("summary").click()
            page.locator(".filters").first.screenshot(path=f"{shots}/report-filter.png")
            page.locator(".scroll").first.screenshot(path=f"{shots}/report-grid.png")
        page.select_option(".filters .mode", "all")
        page.fill(".filters .search", "nairobi")
        assert count.inner_text() == "1 of 8 items"
        # Plots: every one present as an image (none replaced by an empty-panel note), loaded and wide enough.
        images = page.locator("img[alt=plot]")
        assert images.count() == 4 and page.locator(".empty").count() == 0
        assert all(images.nth(i).evaluate("i => i.complete && i.naturalWidth > 300") for i in range(4))
        if shots:
            page.set_viewport_size({"width": 1400, "height": 900})
            page.locator("img[alt=plot]").first.screenshot(path=f"{shots}/report-pass-fail.png")
            page.locator("table").nth(1).screenshot(path=f"{shots}/report-summary.png")
        browser.close()
