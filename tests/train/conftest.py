import json

import pytest


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def qa_data(tmp_path):
    rows = [{"prompt": f"Q: what is {i} plus {i}?\nA:", "completion": f" {2 * i}"} for i in range(24)]
    return write_jsonl(tmp_path / "train.jsonl", rows)
