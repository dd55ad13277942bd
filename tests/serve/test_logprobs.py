"""logprobs equal the log-softmax of the model's logits (transformers and peft as the oracles, 1e-4 in float32),
through the Python API and the server, streamed and not, for chat and completions, base model and adapter."""

from __future__ import annotations

import pytest
import torch

from http_server import MODEL
from tunelab.engine import SamplingParams

TOL = 1e-4


def hf_logprobs(model, prompt_ids, output_ids):
    """[len(output_ids), vocab] log-softmax of the oracle's logits at each generated position."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + output_ids])).logits[0].float()
    return logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(output_ids)].log_softmax(-1)


def assert_match(entries, expected, output_ids, k):
    assert len(entries) == len(output_ids)
    for lp, row, token in zip(entries, expected, output_ids):
        assert lp.token_id == token
        assert abs(lp.logprob - float(row[token])) < TOL
        best = torch.topk(row, k)
        assert [t for t, _ in lp.top] == best.indices.tolist()
        assert max(abs(v - float(e)) for (_, v), e in zip(lp.top, best.values)) < TOL


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_python_api_logprobs_equal_the_oracle(tiny_server, adapter):
    llm = tiny_server["engine"].llm
    oracle = tiny_server["peft"] if adapter else tiny_server["ref"]
    prompt = llm.tokenizer.encode("The quick brown fox")
    # Sampled, with penalties and a bias: logprobs still describe the model's own distribution.
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=7, logprobs=5, presence_penalty=0.5,
                            logit_bias={5: 3.0})
    seq = llm.make_sequence(prompt, params, adapter)
    out = _run_alone(tiny_server, seq)
    assert_match(out.logprobs, hf_logprobs(oracle, prompt, out.token_ids), out.token_ids, 5)


def _run_alone(tiny_server, seq):
    """Run one sequence through the server's own engine thread (the engine is not re-entrant)."""
    import asyncio

    engine = tiny_server["engine"]

    async def go():
        last = None
        async for last in engine.generate(seq.prompt_ids, seq.params, seq.adapter):
            pass
        return last

    return asyncio.run(go())


@pytest.mark.parametrize("model", [MODEL, "alpha"])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_with_the_openai_client(tiny_server, model, stream):
    c, tok = tiny_server["client"], tiny_server["hf_tok"]
    oracle = tiny_server["peft"] if model == "alpha" else tiny_server["ref"]
    messages = [{"role": "user", "content": "Paris is the capital of"}]
    kwargs = dict(model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    if stream:
        content = []
        for chunk in c.chat.completions.create(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                content += chunk.choices[0].logprobs.content
    else:
        content = c.chat.completions.create(**kwargs).choices[0].logprobs.content
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)
    # Greedy: the chosen token is the oracle's argmax; rebuild the ids from the top alternatives' order.
    ids = []
    for entry in content:
        row = hf_logprobs(oracle, prompt, ids + [0])[-1]
        best = torch.topk(row, 3)
        assert [abs(t.logprob - float(v)) < TOL for t, v in zip(entry.top_logprobs, best.values)] == [True] * 3
        assert abs(entry.logprob - float(best.values[0])) < TOL
        text = tok.decode([int(best.indices[0])])
        if "\ufffd" not in text:  # a whole character: the token string is its text, the bytes its UTF-8
            assert entry.token == text and bytes(entry.bytes) == text.encode()
        ids.append(int(best.indices[0]))
    assert len(content) >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs_k_match_the_python_api(tiny_server, stream):
    c = tiny_server["client"]
    prompt_text = "Hello, how are"
    kwargs = dict(model=MODEL, prompt=prompt_text, max_tokens=8, temperature=1.0, seed=21, logprobs=4)
    if stream:
        tokens, values, tops, offsets = [], [], [], []
        for chunk in c.completions.create(stream=True, **kwargs):
            if chunk.choices and chunk.choices[0].logprobs:
                lp = chunk.choices[0].logprobs
                tokens += lp.tokens
                values += lp.token_logprobs
                tops += lp.top_logprobs
                offsets += lp.text_offset
    else:
        lp = c.completions.create(**kwargs).choices[0].logprobs
        tokens, values, tops, offsets = lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset
    llm = tiny_server["engine"].llm
    seq = llm.make_sequence(prompt_text, SamplingParams(max_tokens=8, temperature=1.0, seed=21, logprobs=4))
    out = _run_alone(tiny_server, seq)
    expected = hf_logprobs(tiny_server["ref"], seq.prompt_ids, out.token_ids)
    assert len(values) == len(out.token_ids)
    for v, row, token, top in zip(values, expected, out.token_ids, tops):
        assert abs(v - float(row[token])) < TOL
        assert sorted(top.values(), reverse=True) == pytest.approx(torch.topk(row, 4).values.tolist(), abs=TOL)
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_logprobs_absent_unless_asked(tiny_server):
    r = tiny_server["client"].chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=3)
    assert r.choices[0].logprobs is None
