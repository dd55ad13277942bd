"""docs/validation.md's `tunelab agree` commands keep running on the shipped data."""

import json
import re
import shlex
from pathlib import Path

import typer
from typer.testing import CliRunner

from tunelab.review.commands import register

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "validation.md"


def test_documented_agree_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = [c for c in re.findall(r"```\n(tunelab agree [^\n]+)\n```", DOC.read_text()) if "ITEMS" not in c]
    assert commands, "docs/validation.md lost its runnable example"
    app = typer.Typer()
    register(app, typer.Typer())
    for cmd in commands:
        args = shlex.split(cmd)[1:] + ["--bootstrap", "100", "--json", "--db", str(tmp_path / "c.db")]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        rows = json.loads(r.output)["correlations"]
        assert {x["level"] for x in rows} == {"item", "input"} and len(rows) == 6 * 2 * 2
