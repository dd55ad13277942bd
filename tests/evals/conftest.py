"""Fixtures: a real OpenAI-compatible HTTP server on a free 127.0.0.1 port
(counting calls, injectable failures), a small capital-cities dataset, and the
eval commands behind a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from eval_helpers import CAPITALS, answer
from typer.testing import CliRunner

from tunelab.evals.commands import register

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


@pytest.fixture
def cli():
    app, bench = typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    register(app, bench)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
