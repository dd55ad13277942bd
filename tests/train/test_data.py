"""Data loading: completion-only labels, chat masking, bad rows named by file and line."""

import pytest
from train_helpers import write_jsonl

from tunelab.models import load_pretrained
from tunelab.train import TrainError
from tunelab.train.data import IGNORE, collate, load_examples, pack


@pytest.fixture(scope="module")
def tok(tiny_checkpoint):
    return load_pretrained(tiny_checkpoint("qwen2"))[1]


def test_prompt_tokens_are_masked(tok, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Capital of France?", "completion": " Paris."}])
    (ex,), stats = load_examples(path, tok, 64)
    prompt = tok.encode("Capital of France?")
    completion = tok.encode(" Paris.", add_special_tokens=False) + [tok.eos_token_id]
    assert ex.input_ids == prompt + completion
    assert ex.labels == [IGNORE] * len(prompt) + completion
    assert stats.target_tokens == len(completion)


def test_chat_rows_train_on_assistant_turns_only(tok, tmp_path):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Japan?"},
        {"role": "assistant", "content": "Tokyo."},
    ]
    (ex,), _ = load_examples(write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}]), tok, 256)
    text = tok.apply_chat_template(messages, add_generation_prompt=False)
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == text
    trained = tok.decode([t for t in ex.labels if t != IGNORE], skip_special_tokens=False)
    # ChatML: each assistant turn's content and its end-of-turn marker, nothing of the user or system.
    assert trained == "Paris.<|im_end|>\nTokyo.<|im_end|>\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"bad\.jsonl:2: not valid JSON"),
        ('["a list"]', r"bad\.jsonl:2: expected a JSON object"),
        ('{"prompt": "x"}', r"bad\.jsonl:2: 'completion' must be a string"),
        ('{"text": "x"}', r"bad\.jsonl:2: expected keys 'prompt' and 'completion', or 'messages'"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"bad\.jsonl:2: no assistant message"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', r"bad\.jsonl:2: messages\[0\] must be"),
    ],
)
def test_malformed_rows_name_file_and_line(tok, tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    with pytest.raises(TrainError, match=message):
        load_examples(path, tok, 64)


def test_long_rows_are_truncated_or_dropped_and_counted(tok, tmp_path):
    rows = [{"prompt": "short", "completion": " yes"}, {"prompt": "word " * 8, "completion": " long answer " * 20}, {"prompt": "word " * 60, "completion": " x"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    kept, stats = load_examples(path, tok, 48, overflow="truncate")
    # The third row loses its whole completion to truncation, so it is dropped, not kept empty.
    assert len(kept) == 2 and stats.truncated == 1 and stats.dropped == 1
    assert max(len(e.input_ids) for e in kept) == 48
    kept, stats = load_examples(path, tok, 48, overflow="drop")
    assert len(kept) == 1 and stats.dropped == 2


def test_packed_rows_restart_positions_and_attention(tok, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "completion": f" a{i}"} for i in range(3)])
    examples, _ = load_examples(path, tok, 64)
    (row,) = pack(examples, 64)
    batch = collate([row], 0)
    starts = row[1]
    assert starts[0] == 0 and len(starts) == 3
    assert batch["position_ids"][0, starts[1]] == 0 and batch["position_ids"][0, starts[1] - 1] > 0
    mask = batch["attn_mask"][0, 0]
    assert not mask[starts[1], starts[1] - 1]  # the second example cannot see the first
    assert mask[starts[1] + 1, starts[1]]
