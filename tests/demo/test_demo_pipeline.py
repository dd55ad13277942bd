"""`make demo` end to end on a tiny random model and the WordNet-format fixture: every step runs (lint, tune, one
eval per rung, ladder, report), the files it leaves are consistent with each other, the ladder's figures match the
stored outputs, and a rerun reuses the adapter and the cached responses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.demo.wordnet import LABELS
from tunelab.evals.metrics import normalize

FIXTURE = Path(__file__).parent / "data.noun"


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    from tiny_models import make_checkpoint

    path = make_checkpoint("qwen2", tmp_path_factory.mktemp("tiny-qwen2"))  # ChatML template
    # The tiny byte-level tokenizer spends a token per character or two; give the few-shot prompt room.
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 2048
    (path / "config.json").write_text(json.dumps(config))
    return path


def _demo(model: Path, out: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "tunelab.demo", "--model", str(model), "--wordnet", str(FIXTURE), "--out", str(out),
            "--held-out-per-label", "2", "--train-per-label", "3", "--steps", "2", "--max-seq-len", "1024",
            "--machine-price", "3.6", "--no-validation"]  # fmt: skip (validation_story has its own tests)
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_demo_runs_the_ladder_and_reruns_from_cache(tmp_path, tiny_chat_model):
    out = tmp_path / "demo"
    first = _demo(tiny_chat_model, out)
    assert "No findings." in first.stdout  # the prompt files lint clean
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in first.stdout

    held_out = [json.loads(line) for line in (out / "data" / "held_out.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert sorted(r["reference"] for r in held_out) == sorted(LABELS * 2) and len(train) == 24
    # Training rows are the zero-shot prompt file rendered, plus the answer; no held-out headword is trained on.
    held_words = {r["entry"].split(":")[0] for r in held_out}
    assert all(row["messages"][-1]["role"] == "assistant" for row in train)
    assert not held_words & {row["messages"][-2]["content"].split(":")[0] for row in train}
    few_shot = yaml.safe_load((out / "prompts" / "few-shot.yaml").read_text())
    train_entries = {row["messages"][-2]["content"]: row["messages"][-1]["content"] for row in train}
    assert sorted(e["output"] for e in few_shot["examples"]) == sorted(LABELS)
    assert all(train_entries[e["input"]] == e["output"] for e in few_shot["examples"])

    summary = json.loads((out / "ladder.json").read_text())
    assert [r["name"] for r in summary["rungs"]] == ["zero-shot", "few-shot", "LoRA-tuned"]
    from tunelab.evals.store import Store

    references = {r["id"]: r["reference"] for r in held_out}
    with Store(out / "tunelab.db") as store:
        for rung in summary["rungs"]:
            rows = store.results(summary["runs"][rung["name"]])
            assert len(rows) == rung["n"] == 16 and rung["errors"] == 0
            hits = [normalize(r.output) == normalize(references[r.item_id]) for r in rows]
            assert rung["quality"] == pytest.approx(sum(hits) / len(hits))
            # Throughput by Little's law: requests in flight / mean latency; cost at $3.6/h is 1 ms per second.
            assert rung["items_per_s"] == pytest.approx(32 * len(rows) / sum(r.latency_s for r in rows))
    few, zero = summary["rungs"][1], summary["rungs"][0]
    assert few["prompt_tokens_per_item"] > zero["prompt_tokens_per_item"]  # the examples are in the prompt
    assert Path(summary["report"]).is_file() and f"report: {summary['report']}" in first.stdout.replace("\n", "")
    assert "| zero-shot |" in (out / "ladder.md").read_text()

    second = _demo(tiny_chat_model, out)
    assert "reusing" in second.stdout and "provider calls: 0 (cached 16" in second.stderr
    again = json.loads((out / "ladder.json").read_text())
    assert again["table"] == summary["table"] and again["runs"] != summary["runs"]
