"""Tokenizer and chat templates against transformers' own tokenizer (the oracle)."""

import json

import pytest
from tiny_models import TEMPLATES, make_tokenizer
from transformers import AutoTokenizer

from tunelab.models import ModelError, Tokenizer

TEXTS = ["Hello, how are you today?", "  leading spaces and\nnewlines\n", "café 東京 🙂", "", "<s> literal special"]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "  Name a colour.  "},
    ],
    [{"role": "user", "content": "Ünïcödé \"quotes\" & <tags>"}],
]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def saved(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"tok-{request.param}")
    make_tokenizer(request.param).save_pretrained(path)
    return path


def test_encode_decode_match_transformers(saved):
    ours, ref = Tokenizer.from_dir(saved), AutoTokenizer.from_pretrained(saved)
    for text in TEXTS:
        assert ours.encode(text) == ref(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False)["input_ids"]
        ids = ref(text)["input_ids"]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(saved, add_generation_prompt):
    ours, ref = Tokenizer.from_dir(saved), AutoTokenizer.from_pretrained(saved)
    for messages in CONVERSATIONS:
        try:
            expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as e:  # the Mistral template rejects a system turn it cannot place
            with pytest.raises(Exception, match=str(e)[:40]):
                ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
            continue
        assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_tools_are_rendered_as_plain_json(tmp_path):
    make_tokenizer("tools").save_pretrained(tmp_path)
    ours, ref = Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    tools = [{"type": "function", "function": {"name": "get<weather>", "parameters": {"city": "Zürich"}}}]
    messages = CONVERSATIONS[1]
    got = ours.apply_chat_template(messages, tools=tools)
    assert got == ref.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert "get<weather>" in got and "Zürich" in got  # not HTML-escaped, not ASCII-escaped


def test_template_in_tokenizer_config_and_named_templates(tmp_path):
    make_tokenizer(None).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": TEMPLATES["chatml"]}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.apply_chat_template(CONVERSATIONS[0]).startswith("<|im_start|>user\nWhat is")


def test_missing_template_and_bad_messages_are_clear(tmp_path):
    make_tokenizer(None).save_pretrained(tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    with pytest.raises(ModelError, match="no chat template"):
        tok.apply_chat_template(CONVERSATIONS[0])
    tok.chat_template = TEMPLATES["chatml"]
    with pytest.raises(ModelError, match=r"messages\[1\]"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, "not a message"])


def test_save_round_trip(saved, tmp_path):
    tok = Tokenizer.from_dir(saved)
    tok.save(tmp_path)
    again, ref = Tokenizer.from_dir(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(TEXTS[2]) == tok.encode(TEXTS[2]) == ref(TEXTS[2])["input_ids"]
    assert again.apply_chat_template(CONVERSATIONS[0]) == ref.apply_chat_template(
        CONVERSATIONS[0], tokenize=False, add_generation_prompt=True)
