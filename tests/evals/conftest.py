"""Fixtures: a real OpenAI-compatible HTTP server on a free 127.0.0.1 port
(counting calls, injectable failures) and a small capital-cities dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_helpers import CAPITALS, answer

from tunelab.evals.fake_server import FakeOpenAI


@pytest.fixture
def server():
    with FakeOpenAI(answer) as srv:
        yield srv


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": c[:2].lower(), "country": c, "reference": city}) + "\n"
                            for c, city in CAPITALS.items()))
    return path
