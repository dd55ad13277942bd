"""docs/lora.md's example must keep running (it asserts its own round trip)."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "lora.md"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_docs_example_runs(capsys):
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    exec(compile(example, str(DOC), "exec"), {})
    assert "trainable params: 3,584 || all params: 94,016" in capsys.readouterr().out
