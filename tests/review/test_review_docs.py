"""docs/human-review.md's owner walkthrough runs as written (bash, the real CLI, a fresh directory)."""

import csv
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "human-review.md"


def test_owner_walkthrough_runs(tmp_path):
    text = DOC.read_text()
    block = re.search(r"A complete owner walkthrough.*?```bash\n(.*?)```", text, re.S).group(1)
    script = f'set -euo pipefail\ntunelab() {{ "{sys.executable}" -m tunelab "$@"; }}\n' + block
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"http://127\.0\.0\.1:8100/signin/\S{40,}", r.stdout)
    assert "http://127.0.0.1:8100/admin/signin/" in r.stdout and "removed 'bob'" in r.stdout
    rows = list(csv.DictReader((tmp_path / "jokes-history.csv").open(newline="")))
    assert rows == []  # nobody has rated yet: the history is empty, with the full header
    header = (tmp_path / "jokes-history.csv").read_text().splitlines()[0]
    assert header == "item_id,rater,dimension,score,preference,comment,timestamp,state,reason,seconds"
