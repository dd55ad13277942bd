"""Convert UniEval's copy of the USR Topical-Chat turn-level ratings into tunelab's
imported-judgment files (run once; the output ships in src/tunelab/review/data/topical_chat/).

    git -C UniEval show HEAD:reproduce/data/dialogue/topical_chat.json > topical_chat.json
    python scripts/convert_topical_chat.py topical_chat.json src/tunelab/review/data/topical_chat

Each of the 60 dialogue contexts (an input) has 6 responses (systems). The two
human-written responses are the references: a model's response is compared with
both, a human response with the other one (never with itself).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HUMANS = ("Original Ground Truth", "New Human Generated")


def convert(src: Path, out: Path) -> None:
    rows = json.loads(src.read_text(encoding="utf-8"))
    contexts = list(dict.fromkeys(r["source"] for r in rows))
    inputs, items, ratings = [], [], []
    for k, ctx in enumerate(contexts):
        group = [r for r in rows if r["source"] == ctx]
        input_id = f"tc{k:02d}"
        inputs.append({"input_id": input_id, "dialogue": ctx.strip(), "fact": group[0]["context"].strip()})
        human = {r["system_id"]: r["system_output"].strip() for r in group if r["system_id"] in HUMANS}
        for r in group:
            system = r["system_id"]
            refs = [text for name, text in human.items() if name != system]
            item_id = f"{input_id}-{_slug(system)}"
            items.append({"id": item_id, "input_id": input_id, "system": system,
                          "output": r["system_output"].strip(), "references": refs})
            for dim, score in r["scores"].items():
                ratings.append({"item_id": item_id, "dimension": dim, "rater": "usr-mean-of-3",
                                "score": float(score)})
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("inputs.jsonl", inputs), ("items.jsonl", items), ("ratings.jsonl", ratings)):
        (out / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in data), encoding="utf-8")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
