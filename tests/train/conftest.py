import pytest
from train_helpers import write_jsonl


@pytest.fixture
def qa_data(tmp_path):
    rows = [{"prompt": f"Q: what is {i} plus {i}?\nA:", "completion": f" {2 * i}"} for i in range(24)]
    return write_jsonl(tmp_path / "train.jsonl", rows)
