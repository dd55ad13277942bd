"""Shared by the review tests (a uniquely named module: several test folders have a conftest.py)."""

import json
import re

from fastapi.testclient import TestClient

from tunelab.review.app import create_app

PAYLOAD = "<script>alert('pwned')</script>"
ADMIN = "admin-token-for-tests"


def write_items(path, n=4, pairwise=False, variants=()):
    """n items; with `variants` (two names), each item once per variant, as a multi-variant eval run
    gives them (`item::variant`, outputs 'answer i x' and 'answer i y')."""
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"item{i}", "input": f"Question {i}?"}
            if pairwise:
                row.update(output_a=f"answer A{i} {PAYLOAD}", output_b=f"answer B{i}", variant_a="SECRETVARIANT_A",
                           variant_b="SECRETVARIANT_B")
            elif variants:
                for v, tag in zip(variants, "xy"):
                    f.write(json.dumps({**row, "id": f"item{i}::{v}", "output": f"answer {i} {tag} {PAYLOAD}"}) + "\n")
                continue
            else:
                row["output"] = f"answer {i} {PAYLOAD}"
            f.write(json.dumps(row) + "\n")
    return path


def client_for(db, token=None, task="demo"):
    """A browser-like client, signed in through the link's confirmation page when given a token."""
    c = TestClient(create_app(db, ADMIN), follow_redirects=False)
    if token:
        assert c.get(f"/signin/{token}").status_code == 200  # the confirmation page
        r = c.post(f"/signin/{token}")
        assert r.status_code == 303 and r.headers["location"] == f"/rate/{task}"
    return c


def csrf_of(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def first_page(c, task="demo"):
    r = c.get(f"/rate/{task}?begin=1")
    assert r.status_code == 303
    page = c.get(r.headers["location"])
    assert page.status_code == 200
    return r.headers["location"], page.text


def rate(c, url, html, *values, comment=""):
    data = {f"dim_{i}": v for i, v in enumerate(values)}
    return c.post(url, data={**data, "comment": comment, "csrf": csrf_of(html), "action": "submit"})
