"""Every shell command in README.md and docs/*.md is either run here on a tiny model, run by its page's own test,
or listed below with the reason it is not run; a command added to the docs without a decision fails the test.

Run here (offline, ~35 s of CPU): README's `info` and both `generate` lines, and tuning.md's `tune tune.yaml` (the
page's own tune.yaml and data, steps cut to 10 for time) followed by its `generate --adapter`, and benchmarks.md's
`build --quant int4`. Where a page names
the built-in model it is replaced by a tiny random llama (`BUILTIN` -> `TINY`): the 135M-parameter model would take
minutes to tune on a CPU, and tests/models/test_docs_models.py already runs `info` and `generate` on the real one.
"""

from __future__ import annotations

import json
import shutil

import pytest
from doc_commands import PAGES, ROOT, commands, files, run
from tiny_models import make_checkpoint

BUILTIN, TINY = "smollm2-135m-instruct", "tiny-llama"
RUN = {
    ("README.md", f"tunelab info {BUILTIN}"),
    ("README.md", f'tunelab generate --model {BUILTIN} --prompt "What is the capital of France?" --chat'),
    ("README.md", 'tunelab generate --model ./my-llama --prompt "Hi" --chat --temperature 0.7 --top-p 0.9 --seed 1'),
    ("tuning.md", "tunelab tune tune.yaml"),
    ("tuning.md", f'tunelab generate --model {BUILTIN} --adapter capitals-lora --prompt "The capital of Kenya is" '
                  "--max-tokens 8"),
    ("benchmarks.md", f"tunelab build {BUILTIN} --quant int4 -o smollm2-int4"),
}
ELSEWHERE = {  # (page, command prefix): the test that runs it
    ("models.md", "tunelab "): "tests/models/test_docs_models.py (the real built-in model)",
    ("human-review.md", "cat > items.jsonl"): "tests/review/test_review_docs.py (the owner walkthrough)",
    ("human-review.md", "printf "): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review create jokes --from"): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review add-rater jokes"): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review admin-link"): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review deadline"): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review status"): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review remove-rater"): "tests/review/test_review_docs.py",
    ("human-review.md", "tunelab review export jokes --format csv --history"): "tests/review/test_review_docs.py",
    ("benchmarks.md", "python -m tunelab.demo.variants "): "tests/demo/test_variants.py (each subcommand, on the "
                                                           "demo's own task files and a tiny model)",
}
NOT_RUN = {  # (page, command prefix): why not
    ("README.md", "make "): "builds a second virtual environment and runs the whole suite",
    ("README.md", "tunelab lint prompts/ --format text|json|sarif"): "a usage synopsis (alternatives, [--fix]), not "
                                                                     "one command; tests/prompts run each format",
    ("README.md", "tunelab prompt render prompts/summary.prompt"): "the page does not show prompts/summary.prompt",
    ("README.md", "tunelab eval eval.yaml"): "the page does not show eval.yaml (make demo runs the whole chain)",
    ("README.md", "tunelab results"): "needs an eval run (eval.yaml above)",
    ("README.md", "tunelab compare"): "RUN_A/RUN_B are placeholders for run ids of eval.yaml",
    ("README.md", "tunelab runs"): "needs an eval run (eval.yaml above)",
    ("README.md", "tunelab ladder"): "needs an eval run with zs@base and zs@lora (make demo runs it)",
    ("README.md", "tunelab report"): "RUN_A/RUN_B are placeholders",
    ("README.md", "tunelab review create capitals --run latest"): "needs an eval run",
    ("README.md", "tunelab review add-rater capitals"): "needs the task created from an eval run",
    ("README.md", "tunelab review serve"): "starts a server",
    ("README.md", "tunelab agree capitals"): "needs an eval run and ratings",
    ("README.md", f"tunelab tune --model {BUILTIN} --data train.jsonl"): "the page does not show train.jsonl; "
                                                                            "tuning.md's tune runs the same path",
    ("README.md", "tunelab serve"): "starts a server",
    ("README.md", "curl "): "needs the server above",
    ("evaluation.md", "tunelab ladder"): "needs an eval run with these variants (make demo runs it)",
    ("human-review.md", "tunelab eval evals.yaml"): "the page does not show evals.yaml",
    ("human-review.md", "tunelab runs"): "needs an eval run",
    ("human-review.md", "tunelab review create jokes --run latest"): "needs an eval run",
    ("human-review.md", "tunelab review create ab --run latest"): "needs an eval run with v1@local and v2@local",
    ("human-review.md", "tunelab review create ext --from items.jsonl"): "items.jsonl is the walkthrough's; same path",
    ("human-review.md", "tunelab review export jokes --format csv   >"): "needs ratings from a browser",
    ("human-review.md", "tunelab review export jokes --format jsonl"): "needs ratings from a browser",
    ("human-review.md", "tunelab review import"): "the page does not show labels-from-elsewhere.csv",
    ("human-review.md", "tunelab agree"): "needs ratings (and scores.jsonl, not shown)",
    ("serving.md", "tunelab serve"): "starts a server (tests/serve/test_serve_command.py starts one)",
    ("serving.md", "curl "): "needs the server above",
    ("serving.md", "tunelab bench generate"): "a benchmark: minutes, and transformers as its oracle",
    ("tuning.md", "tunelab serve"): "starts a server",
    ("tuning.md", "curl "): "needs the server above",
    ("tuning.md", "torchrun "): "needs two processes with a distributed backend (tests/train covers DDP)",
    ("benchmarks.md", "tunelab eval demo/rungs/"): "needs `make demo`'s folder and minutes of the real model; "
                                                   "tests/demo/test_variants.py evaluates such variants on a tiny one",
    ("benchmarks.md", "tunelab bench generate"): "a benchmark: minutes on the real model, transformers (and "
                                                 "llama-cpp-python) as oracles; tests/engine/test_generate_bench.py "
                                                 "runs it on a small random model",
    ("benchmarks.md", "bash scripts/gpu-check.sh"): "needs a CUDA GPU; tests/engine/test_decode_graphs.py runs the "
                                                    "graphed decode step eagerly on CPU",
    ("scaling.md", "pip install vllm"): "installs another server (and needs a network)",
    ("scaling.md", "vllm serve"): "another project's server, for a GPU",
    ("scaling.md", "cat > lora.yaml"): "TensorRT-LLM's option file, used only by trtllm-serve below",
    ("scaling.md", "trtllm-serve"): "another project's server, for an NVIDIA GPU",
    ("scaling.md", "curl "): "needs the server above",
    ("scaling.md", "tunelab eval eval.yaml"): "needs the vLLM endpoint above",
    ("scaling.md", "tunelab report latest"): "needs the eval run above",
    ("scaling.md", "torchrun "): "needs several processes (or machines) with a distributed backend (tests/train "
                                 "covers DDP with two gloo processes)",
}


def _decision(page: str, command: str) -> str | None:
    if (page, command) in RUN:
        return "run"
    for table in (ELSEWHERE, NOT_RUN):
        for (p, prefix), why in table.items():
            if p == page and command.startswith(prefix):
                return why
    return None


def test_every_command_in_the_docs_has_a_decision():
    shown = [(page.name, c) for page in PAGES for c in commands(page)]
    assert len(shown) > 50
    undecided = [f"{p}: {c}" for p, c in shown if _decision(p, c) is None]
    assert undecided == []
    assert RUN <= set(shown), "a command listed in RUN is no longer in its page"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_runnable_commands_run(tmp_path):
    make_checkpoint("llama", tmp_path / TINY)
    shutil.copytree(tmp_path / TINY, tmp_path / "my-llama")
    tuning = ROOT / "docs" / "tuning.md"
    tune_yaml = files(tuning)["tune.yaml"].replace("steps: 60 ", "steps: 10 ").replace(BUILTIN, TINY)
    assert "steps: 10 " in tune_yaml
    (tmp_path / "tune.yaml").write_text(tune_yaml.replace("save_every: 20", "save_every: 10")
                                        .replace("eval_every: 20", "eval_every: 10"))
    rows = [json.loads(line) for line in _json_block(tuning).splitlines()]
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 10))
    ordered = [(page.name, c) for page in PAGES for c in commands(page) if (page.name, c) in RUN]
    for page, command in ordered:
        out = run(command.replace(BUILTIN, TINY), tmp_path)
        assert out.returncode == 0, f"{page}: {command}\n{out.stdout}\n{out.stderr}"
        if "generate" in command:
            assert "completion tokens" in out.stdout + out.stderr, command
    assert (tmp_path / "capitals-lora" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "smollm2-int4" / "tunelab-build.json").read_text())["quant"]["mode"] == "int4"


def _json_block(page) -> str:
    import re

    return re.findall(r"```json\n(.*?)```", page.read_text(), re.S)[0]
