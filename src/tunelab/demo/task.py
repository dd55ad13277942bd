"""The demo's task on disk: data, prompt files, the tuning config and one eval config per rung.

Everything `make demo` runs is a file in the demo folder, so each step can be rerun or edited by hand:

    data/train.jsonl       chat rows for `tunelab tune`, rendered with the zero-shot prompt file
    data/held_out.jsonl    {id, entry, reference}: 25 per category, headwords never seen in training
    prompts/*.yaml         the zero-shot prompt, and the few-shot prompt (one example per category)
    tune.yaml              the LoRA run
    rungs/*.yaml           one eval config per rung, so each rung's throughput is measured on its own
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from tunelab.demo.wordnet import LABELS, Split, Synset

ZERO_SHOT = files("tunelab.demo").joinpath("zero-shot.yaml")
RUNGS = {"zero-shot": ("zero-shot", "base"), "few-shot": ("few-shot", "base"), "LoRA-tuned": ("zero-shot", "lora")}


@dataclass
class TuneSettings:
    """Chosen to fit `make demo`'s budget on a 2-core CPU; see README (the ladder) for what was measured."""

    steps: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 5
    rank: int = 8
    alpha: float = 16.0
    targets: str = "all-linear"
    max_seq_len: int = 128


@dataclass
class TaskFiles:
    folder: Path
    adapter: Path  # named after everything that determines it, so a rerun reuses it and a change retrains
    tune: Path
    rungs: dict[str, Path]


def write_task(folder: Path, data: Split, model: str, tune: TuneSettings, concurrency: int) -> TaskFiles:
    from tunelab.prompts.prompt_file import load_prompt
    from tunelab.prompts.render import render

    for sub in ("data", "prompts", "rungs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    zero_shot_text = ZERO_SHOT.read_text(encoding="utf-8")
    (folder / "prompts" / "zero-shot.yaml").write_text(zero_shot_text, encoding="utf-8")
    prompt = load_prompt(folder / "prompts" / "zero-shot.yaml")
    # Training rows are the zero-shot prompt rendered exactly as the eval renders it, plus the answer.
    train = [{"messages": [*render(prompt, {"entry": s.entry}), {"role": "assistant", "content": s.category}]}
             for s in data.train]
    _write_jsonl(folder / "data" / "train.jsonl", train)
    _write_jsonl(folder / "data" / "held_out.jsonl",
                 [{"id": s.offset, "entry": s.entry, "reference": s.category} for s in data.held_out])
    examples = [{"input": s.entry, "output": s.category} for s in few_shot_examples(data.train)]
    body = "\n".join(line for line in zero_shot_text.splitlines() if not line.startswith("#"))
    (folder / "prompts" / "few-shot.yaml").write_text(
        "# Written by `make demo`: prompts/zero-shot.yaml plus one example per category from data/train.jsonl\n"
        "# (each becomes a user turn and the assistant's answer before the entry to classify).\n"
        + body + "\n" + yaml.safe_dump({"examples": examples}, sort_keys=False, width=120, allow_unicode=True),
        encoding="utf-8")

    tune_cfg = {"model": model, "data": "data/train.jsonl", **vars(tune), "schedule": "cosine", "seed": 0}
    key = _digest(json.dumps(tune_cfg, sort_keys=True), (folder / "data" / "train.jsonl").read_bytes())
    adapter = folder / f"lora-{key}"
    tune_cfg["out"] = adapter.name
    tune_path = folder / "tune.yaml"
    tune_path.write_text(yaml.safe_dump(tune_cfg, sort_keys=False), encoding="utf-8")

    params = dict(prompt.params or {})
    params.pop("model", None)
    providers = {"base": {"id": "base", "type": "tunelab", "model": model, "chat": True, "params": params},
                 "lora": {"id": "lora", "type": "tunelab", "model": model, "chat": True, "params": params,
                          "adapter": f"../{adapter.name}"}}  # fmt: skip
    rungs = {}
    for name, (prompt_id, provider) in RUNGS.items():
        path = folder / "rungs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "description": f"WordNet noun categories, {name} rung",
            "dataset": "../data/held_out.jsonl",
            "prompts": [{"id": prompt_id, "file": f"../prompts/{prompt_id}.yaml"}],
            "providers": [providers[provider]],
            "metrics": ["exact_match"],
            "concurrency": concurrency,
        }, sort_keys=False, width=120), encoding="utf-8")  # fmt: skip
        rungs[name] = path
    return TaskFiles(folder, adapter, tune_path, rungs)


def variant(rung: str) -> str:
    prompt_id, provider = RUNGS[rung]
    return f"{prompt_id}@{provider}"


def few_shot_examples(train: list[Synset]) -> list[Synset]:
    """One training item per category, the shortest of the first few, so the prompt stays short."""
    out = []
    for label in LABELS:
        candidates = [s for s in train if s.category == label][:20]
        out.append(min(candidates, key=lambda s: (len(s.entry), s.entry)))
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:10]
