"""`python -m tunelab.demo.variants` on the demo's own task files (written by tunelab.demo.task from the WordNet
fixture) and a tiny random chat model: a variant changes only the provider, the timed evals run and are stored,
`diff` agrees with outputs scored by hand, and the prefix-cache hit rate equals the shared full blocks counted by
hand from the prompts' token ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.demo.task import TuneSettings, write_task
from tunelab.demo.variants import hit_rate, output_diff
from tunelab.demo.wordnet import read_synsets, split
from tunelab.evals.errors import EvalError
from tunelab.evals.metrics import normalize
from tunelab.evals.store import Store

FIXTURE = Path(__file__).parent / "data.noun"


@pytest.fixture(scope="module")
def rungs(tmp_path_factory):
    from tiny_models import make_checkpoint

    root = tmp_path_factory.mktemp("variants")
    model = make_checkpoint("qwen2", root / "tiny-qwen2")  # ChatML template
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 2048  # the few-shot prompt, a token per character or two
    (model / "config.json").write_text(json.dumps(config))
    files = write_task(root / "demo", split(read_synsets(FIXTURE), 2, 3), str(model), TuneSettings(), concurrency=4)
    return files.rungs


def _variants(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "tunelab.demo.variants", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_write_changes_only_the_tunelab_provider(rungs):
    few = rungs["few-shot"]
    out = Path(_variants("write", str(few), "--dtype", "bfloat16", "--prefix-caching", "off", cwd=few.parent)
               .stdout.strip())
    assert out == few.with_name("few-shot.bfloat16.no-prefix-cache.yaml")
    before, after = yaml.safe_load(few.read_text()), yaml.safe_load(out.read_text())
    provider = after["providers"][0]
    assert provider.pop("dtype") == "bfloat16" and provider.pop("engine") == {"enable_prefix_caching": False}
    assert after == before


def test_write_names_the_file_when_the_dtype_is_wrong(rungs):
    few = rungs["few-shot"]
    done = subprocess.run([sys.executable, "-m", "tunelab.demo.variants", "write", str(few), "--dtype", "fp8"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "few-shot.fp8.yaml" in done.stderr and "dtype" in done.stderr and "fp8" in done.stderr


def test_timed_runs_diff_and_hit_rate(rungs, tmp_path):
    few = rungs["few-shot"]
    folder = few.parent
    off = Path(_variants("write", str(few), "--prefix-caching", "off", cwd=folder).stdout.strip())
    db, report = tmp_path / "timing.db", tmp_path / "timing.json"
    _variants("time", str(few), str(off), "--rounds", "1", "--db", str(db), "--out", str(report), cwd=folder)
    timing = json.loads(report.read_text())
    assert [r["config"] for r in timing["runs"]] == [str(few), str(off)]
    run_on, run_off = (r["run"] for r in timing["runs"])

    references = {json.loads(line)["id"]: json.loads(line)["reference"]
                  for line in (folder.parent / "data" / "held_out.jsonl").read_text().splitlines()}
    with Store(db) as store:
        rows_on, rows_off = store.results(run_on), store.results(run_off)
    assert len(rows_on) == len(rows_off) == 16 and all(r.error is None for r in rows_on + rows_off)

    def accuracy(rows):
        return sum(normalize(r.output) == normalize(references[r.item_id]) for r in rows) / len(rows)

    d = output_diff(db, run_on, run_off)
    assert d["items"] == 16 and d["metrics"]["exact_match"] == pytest.approx([accuracy(rows_on), accuracy(rows_off)])
    assert d["outputs_differ"] == 0  # greedy outputs with the prefix cache equal outputs without it

    # In bfloat16 some outputs may change: diff counts them item by item, and scores each run as above.
    bf16 = Path(_variants("write", str(few), "--dtype", "bfloat16", cwd=folder).stdout.strip())
    run_bf16 = _eval(bf16, db)
    with Store(db) as store:
        rows_bf16 = {r.item_id: r for r in store.results(run_bf16)}
    d = output_diff(db, run_on, run_bf16)
    assert d["metrics"]["exact_match"] == pytest.approx([accuracy(rows_on), accuracy(list(rows_bf16.values()))])
    assert d["outputs_differ"] == sum(r.output != rows_bf16[r.item_id].output for r in rows_on)
    with pytest.raises(EvalError, match="share no"):  # different rungs are different variants (prompt@provider)
        output_diff(db, run_on, _eval(rungs["zero-shot"], db))

    on = hit_rate(few, db, run_on)
    ids = [_prompt_ids(r.rendered, few) for r in rows_on]
    block = 16  # the engine's default block size
    # Every prompt shares its first `least` tokens (the system prompt and the examples) with every other, and the block
    # holding the last of them is full in each, so whichever request is admitted first, each of the others finds at
    # least those tokens cached (matching is token-granular), and at most its longest common prefix with another.
    least = min(_common(p, q) for p in ids for q in ids if p is not q)
    assert least % block and min(len(p) for p in ids) >= -(-least // block) * block
    most = [min(len(p) - 1, max(_common(p, q) for q in ids if q is not p)) for p in ids]
    assert (len(ids) - 1) * least <= on["cached_tokens"] <= sum(most) - min(most)
    assert on["prompt_tokens"] == sum(map(len, ids))
    assert on["same_outputs_as_run"] == 16
    assert hit_rate(off, db, run_off)["cached_tokens"] == 0


def _eval(config: Path, db: Path) -> str:
    from tunelab.evals.config import load_config
    from tunelab.evals.runner import run_eval

    stats = run_eval(load_config(config), db)
    assert stats.errors == 0
    return stats.run_id


def _prompt_ids(messages: list[dict], config: Path) -> list[int]:
    from transformers import AutoTokenizer  # the oracle: transformers' own chat template

    model = yaml.safe_load(config.read_text())["providers"][0]["model"]
    tok = AutoTokenizer.from_pretrained(model)
    return tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
