"""n, echo, logit_bias, max_completion_tokens and stream_options.include_usage, through the official client."""

from __future__ import annotations

import openai
import pytest
import torch

from http_server import MODEL

MSG = [{"role": "user", "content": "Hello, how are"}]


def test_n_gives_distinct_seeded_choices_and_counts_the_prompt_once(tiny_server):
    c = tiny_server["client"]
    r = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=1.0, seed=5, n=3)
    texts = [ch.message.content for ch in r.choices]
    assert [ch.index for ch in r.choices] == [0, 1, 2] and len(set(texts)) == 3
    one = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=1.0, seed=5)
    assert one.choices[0].message.content == texts[0]  # choice 0 is the request's own seed
    again = c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=1.0, seed=5, n=3)
    assert [ch.message.content for ch in again.choices] == texts  # seeded: repeatable
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    streamed = {}
    for chunk in c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=1.0, seed=5, n=3,
                                           stream=True, stream_options={"include_usage": True}):
        for ch in chunk.choices:
            streamed[ch.index] = streamed.get(ch.index, "") + (ch.delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert [streamed[i] for i in range(3)] == texts
    assert usage.prompt_tokens == r.usage.prompt_tokens and usage.completion_tokens == r.usage.completion_tokens


def test_completions_n_with_several_prompts(tiny_server):
    c = tiny_server["client"]
    r = c.completions.create(model=MODEL, prompt=["Paris is", "The quick brown fox"], max_tokens=5, n=2,
                             temperature=1.0, seed=1)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    singles = [c.completions.create(model=MODEL, prompt=p, max_tokens=5, temperature=1.0, seed=1)
               for p in ("Paris is", "The quick brown fox")]
    assert r.choices[0].text == singles[0].choices[0].text and r.choices[2].text == singles[1].choices[0].text
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)


def test_echo_prepends_the_prompt_text_and_token_ids(tiny_server):
    c, tok = tiny_server["client"], tiny_server["hf_tok"]
    plain = c.completions.create(model=MODEL, prompt="Paris is", max_tokens=5, temperature=0)
    echoed = c.completions.create(model=MODEL, prompt="Paris is", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "Paris is" + plain.choices[0].text
    ids = tok("Paris is", add_special_tokens=False)["input_ids"]
    by_ids = c.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0, echo=True)
    assert by_ids.choices[0].text.startswith(tok.decode(ids))
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=MODEL, prompt="Paris is", max_tokens=5, temperature=0, echo=True, stream=True) if ch.choices)
    assert streamed == echoed.choices[0].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        c.completions.create(model=MODEL, prompt="Paris is", max_tokens=5, echo=True, logprobs=1)


def test_logit_bias_forces_and_bans_tokens(tiny_server):
    c, tok = tiny_server["client"], tiny_server["hf_tok"]
    target = tok.convert_tokens_to_ids("Ġfox") if tok.convert_tokens_to_ids("Ġfox") else 300
    r = c.completions.create(model=MODEL, prompt="Paris is", max_tokens=4, temperature=0,
                             logit_bias={str(target): 100})
    assert r.choices[0].text == tok.decode([target] * 4)
    plain = c.completions.create(model=MODEL, prompt="Paris is", max_tokens=1, temperature=0, logprobs=1)
    with torch.no_grad():
        greedy = int(tiny_server["ref"](torch.tensor([tok("Paris is")["input_ids"]])).logits[0, -1].argmax())
    banned = c.completions.create(model=MODEL, prompt="Paris is", max_tokens=1, temperature=0, logprobs=1,
                                  logit_bias={str(greedy): -100})
    assert banned.choices[0].logprobs.tokens[0] != plain.choices[0].logprobs.tokens[0]
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.completions.create(model=MODEL, prompt="x", max_tokens=1, logit_bias={"999999": 5})


def test_max_completion_tokens_limits_chat(tiny_server):
    c = tiny_server["client"]
    r = c.chat.completions.create(model=MODEL, messages=MSG, max_completion_tokens=3, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        c.chat.completions.create(model=MODEL, messages=MSG, max_completion_tokens=3, max_tokens=4)


def test_include_usage_only_when_asked(tiny_server):
    c = tiny_server["client"]
    chunks = list(c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3, stream=True))
    assert all(ch.usage is None for ch in chunks)
    chunks = list(c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
