"""Shared by the review tests (a uniquely named module: several test folders have a conftest.py)."""

import json

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
