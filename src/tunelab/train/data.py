"""Training data: JSONL rows -> token ids with labels on completion tokens only.

Two row shapes:
- `{"prompt": ..., "completion": ...}`: prompt and completion are tokenised
  separately (the completion is what the model will be asked to produce after the
  prompt at inference time) and EOS is appended; loss on completion + EOS.
- `{"messages": [{"role", "content"}, ...]}`: rendered with the model's chat
  template; loss on the characters of each assistant turn, found by rendering the
  conversation up to each turn (templates are prefix-stable) and mapped to tokens
  through the tokenizer's offsets.

Every row is validated before training starts; a bad one names file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.io.records import jsonl_records
from tunelab.train.config import TrainError

IGNORE = -100
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class DataStats:
    rows: int = 0
    truncated: int = 0
    dropped: int = 0
    target_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def load_examples(path: str | Path, tokenizer, max_seq_len: int, overflow: str = "truncate"):
    """Read and tokenise a JSONL file. Returns (examples, stats)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: training data file not found")
    rows = [(lineno, _validate(row, path, lineno)) for lineno, row in jsonl_records(path, TrainError, "training data")]
    if not rows:
        raise TrainError(f"{path}: no rows")
    stats = DataStats(rows=len(rows))
    examples = []
    for lineno, row in rows:
        ids, labels = _tokenise(row, tokenizer, path, lineno)
        if len(ids) > max_seq_len:
            if overflow == "drop":
                stats.dropped += 1
                continue
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            stats.truncated += 1
            if all(t == IGNORE for t in labels[1:]):
                # Truncation removed every target token: nothing left to learn from.
                stats.dropped += 1
                stats.truncated -= 1
                continue
        stats.target_tokens += sum(t != IGNORE for t in labels[1:])
        examples.append(Example(ids, labels))
    if not examples:
        raise TrainError(f"{path}: every row was longer than max_seq_len={max_seq_len} and was dropped")
    return examples, stats


def _validate(row, path, lineno):
    where = f"{path}:{lineno}"
    if not isinstance(row, dict):
        raise TrainError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise TrainError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise TrainError(
                    f"{where}: messages[{i}] must be {{'role': one of {list(ROLES)}, 'content': string}}, got {m!r}"
                )
        if not any(m["role"] == "assistant" for m in messages):
            raise TrainError(f"{where}: no assistant message, so there is nothing to train on")
        return row
    if "prompt" in row or "completion" in row:
        for key in ("prompt", "completion"):
            if not isinstance(row.get(key), str):
                raise TrainError(f"{where}: '{key}' must be a string, got {row.get(key)!r}")
        if not row["completion"]:
            raise TrainError(f"{where}: 'completion' is empty, so there is nothing to train on")
        return row
    raise TrainError(f"{where}: expected keys 'prompt' and 'completion', or 'messages'; got {sorted(row)}")


def _tokenise(row, tokenizer, path, lineno):
    if "messages" in row:
        return _tokenise_chat(row["messages"], tokenizer, path, lineno)
    prompt = tokenizer.encode(row["prompt"], add_special_tokens=True)
    completion = tokenizer.encode(row["completion"], add_special_tokens=False)
    if tokenizer.eos_token_id is not None:
        completion.append(tokenizer.eos_token_id)
    return prompt + completion, [IGNORE] * len(prompt) + completion


def _tokenise_chat(messages, tokenizer, path, lineno):
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)) if i else 0
        end = len(tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False))
        if not text.startswith(tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)):
            raise TrainError(
                f"{path}:{lineno}: the chat template does not render this conversation prefix-stably, "
                "so assistant tokens cannot be located; use prompt/completion rows instead"
            )
        spans.append((start, end))
    ids, offsets = tokenizer.encode_with_offsets(text, add_special_tokens=False)
    labels = []
    for token, (a, b) in zip(ids, offsets):
        inside = any(s <= a < e for s, e in spans) and b > a
        labels.append(token if inside else IGNORE)
    return ids, labels


class Batches:
    """Deterministic, resumable batches: a seeded permutation per epoch, and a
    position (epoch, index) that a checkpoint can store and restore."""

    def __init__(self, examples, batch_size, seed, pad_id, packing=False, max_seq_len=1024, rank=0, world=1):
        self.examples = pack(examples, max_seq_len) if packing else [(e, None) for e in examples]
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
        self.packing = packing
        self.rank, self.world = rank, world
        self.epoch, self.index = 0, 0
        # One global batch is batch_size rows on every rank.
        self.per_epoch = max(1, len(self.examples) // (batch_size * world))

    def next(self):
        if self.index >= self.per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        start = self.index * self.batch_size * self.world + self.rank * self.batch_size
        rows = [self.examples[i] for i in order[start : start + self.batch_size]]
        self.index += 1
        return collate(rows, self.pad_id)

    def state(self):
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state):
        self.epoch, self.index = state["epoch"], state["index"]


def pack(examples, max_seq_len):
    """Greedily concatenate examples into rows of at most max_seq_len tokens. Each
    row remembers where its examples start, so attention and positions restart there."""
    rows, current, starts = [], Example([], []), []
    for e in examples:
        if current.input_ids and len(current.input_ids) + len(e.input_ids) > max_seq_len:
            rows.append((current, starts))
            current, starts = Example([], []), []
        starts.append(len(current.input_ids))
        current = Example(current.input_ids + e.input_ids, current.labels + [IGNORE] + e.labels[1:])
    rows.append((current, starts))
    return rows


def collate(rows, pad_id):
    """Right-padded tensors. Right padding needs no attention mask for causal
    attention: real tokens never look at the pads that follow them."""
    width = max(len(e.input_ids) for e, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (e, _) in enumerate(rows):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
    batch = {"input_ids": ids, "labels": labels}
    if any(starts for _, starts in rows):
        positions = torch.zeros_like(ids)
        segment = torch.full_like(ids, -1)
        for i, (e, starts) in enumerate(rows):
            bounds = list(starts or [0]) + [len(e.input_ids)]
            for s, (a, b) in enumerate(zip(bounds, bounds[1:])):
                positions[i, a:b] = torch.arange(b - a)
                segment[i, a:b] = s
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        same = segment[:, :, None] == segment[:, None, :]
        batch["position_ids"] = positions
        batch["attn_mask"] = (same & causal)[:, None]
    return batch


def split_validation(examples, fraction, seed):
    if fraction <= 0:
        return examples, []
    g = torch.Generator().manual_seed(seed + 7919)
    order = torch.randperm(len(examples), generator=g).tolist()
    n_val = max(1, int(round(len(examples) * fraction)))
    val = {i for i in order[:n_val]}
    return [e for i, e in enumerate(examples) if i not in val], [examples[i] for i in sorted(val)]
