"""Benchmark: `tunelab agree` on 1,600 items × 4 dimensions × 3 metrics at all three levels with
1,000 bootstrap resamples (the issue's bar: ≤ 30 s on the 2-core box).

    PYTHONPATH=src python scripts/bench_agree.py [--items 1600] [--bootstrap 1000]

Writes synthetic ITEMS / RATINGS / scores files (200 inputs × 8 systems, 3 raters) to a temporary
folder, then times the real command end to end in a fresh process (start-up and file reading
included) and, separately, the correlation step alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_study(folder: Path, n_items: int, n_systems: int = 8, seed: int = 0) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    n_inputs = n_items // n_systems
    dims = ("naturalness", "coherence", "engagingness", "groundedness")
    quality = rng.normal(size=n_systems)
    items, ratings, scores = [], [], []
    for i in range(n_inputs):
        for s in range(n_systems):
            iid = f"in{i}-s{s}"
            items.append({"id": iid, "input_id": f"in{i}", "system": f"s{s}", "output": f"response {i} {s}",
                          "references": [f"reference {i}"]})
            truth = {d: quality[s] + rng.normal() for d in dims}
            for d in dims:
                for rater in ("ann", "bob", "cy"):
                    ratings.append({"item_id": iid, "dimension": d, "rater": rater,
                                    "score": int(np.clip(round(truth[d] + 3 + rng.normal(scale=0.8)), 1, 5))})
            for m, noise in (("good", 0.5), ("fair", 1.5), ("noise", None)):
                base = np.mean(list(truth.values()))
                value = rng.normal() if noise is None else base + rng.normal(scale=noise)
                scores.append({"item_id": iid, "metric": m, "value": round(float(value), 4)})
    paths = folder / "items.jsonl", folder / "ratings.jsonl", folder / "scores.jsonl"
    for path, rows in zip(paths, (items, ratings, scores)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1600)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items, ratings, scores = write_study(Path(tmp), args.items)
        cmd = [sys.executable, "-m", "tunelab", "agree", "--items", str(items), "--ratings", str(ratings),
               "--scores", str(scores), "--bootstrap", str(args.bootstrap), "--json", "--db", str(Path(tmp) / "c.db")]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - t0
        rows = json.loads(out)["correlations"]

        from tunelab.review.imported import Study, load_items, load_ratings, scores_from_file, validate
        from tunelab.review.levels import BootConfig
        from tunelab.review.longformat import load_scores

        its = load_items(items)
        study = Study(its, load_ratings(ratings, its), scores_from_file(load_scores(scores), [i.id for i in its]))
        t1 = time.perf_counter()
        validate(study, BootConfig(n_boot=args.bootstrap))
        core = time.perf_counter() - t1
    print(f"tunelab agree: {args.items} items × 4 dimensions × 3 metrics × 3 levels, {args.bootstrap} resamples "
          f"({len(rows)} figures, 3 raters so a human–human ceiling per level)")
    print(f"  end to end (new process): {wall:.1f} s;  correlations + bootstrap alone: {core:.1f} s")


if __name__ == "__main__":
    main()
