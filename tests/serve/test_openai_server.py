"""The OpenAI-compatible server, driven by the real `openai` client (and httpx for what the client cannot send)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunelab.engine import LLM, AsyncLLM
from tunelab.serve import create_app

from http_server import Server, make_peft_adapter, metric

KEY = "sekret"
NAME = "tiny-llama"


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    base = tiny_checkpoint("llama")
    adapter_dir = tmp_path_factory.mktemp("adapter") / "alpha"
    peft_model = make_peft_adapter(base, adapter_dir, 3)
    engine = AsyncLLM(LLM(base, block_size=4, adapters={"alpha": str(adapter_dir)}))
    server = Server(create_app(engine, NAME, api_key=KEY))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    yield {"server": server, "client": client, "engine": engine, "ref": ref, "peft": peft_model,
           "hf_tok": AutoTokenizer.from_pretrained(base)}
    server.stop()
    engine.shutdown()


def hf_text(model, tok, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2)
    return tok.decode([t for t in out[0, len(ids):].tolist() if t != 1], skip_special_tokens=True)


def test_models_lists_base_and_adapters(served):
    ids = [m.id for m in served["client"].models.list().data]
    assert ids == [NAME, "alpha"]


def test_completion_equals_transformers_and_stream_concatenates(served):
    c, tok = served["client"], served["hf_tok"]
    prompt = "The quick brown fox"
    r = c.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == hf_text(served["ref"], tok, tok(prompt)["input_ids"], 20)
    assert r.usage.prompt_tokens == len(tok(prompt)["input_ids"])
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(c.completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason


def test_chat_uses_the_template_and_streams_the_same_text(served):
    c, tok = served["client"], served["hf_tok"]
    messages = [{"role": "user", "content": "Paris is the capital of"}]
    r = c.chat.completions.create(model=NAME, messages=messages, max_tokens=16, temperature=0)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = ids["input_ids"] if isinstance(ids, dict) else list(ids)
    assert r.choices[0].message.content == hf_text(served["ref"], tok, ids, 16)
    assert r.choices[0].message.role == "assistant" and r.usage.prompt_tokens == len(ids)
    stream = c.chat.completions.create(model=NAME, messages=messages, max_tokens=16, temperature=0, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream) == r.choices[0].message.content


def test_adapter_is_chosen_by_model_name(served):
    c, tok = served["client"], served["hf_tok"]
    prompt = "Hello, how"
    ids = tok(prompt)["input_ids"]
    with_adapter = c.completions.create(model="alpha", prompt=prompt, max_tokens=16, temperature=0)
    base = c.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=0)
    assert with_adapter.choices[0].text == hf_text(served["peft"], tok, ids, 16)
    assert with_adapter.choices[0].text != base.choices[0].text
    assert with_adapter.model == "alpha"


def test_errors_have_openai_shape(served):
    c, url = served["client"], served["server"].url
    cases = [
        (openai.BadRequestError, dict(model=NAME, prompt="hi", max_tokens=-1), "max_tokens"),
        (openai.BadRequestError, dict(model=NAME, prompt="hi", temperature=5), "temperature"),
        (openai.BadRequestError, dict(model=NAME, prompt=[5] * 300), "context"),
        (openai.NotFoundError, dict(model="nope", prompt="hi"), "nope"),
    ]
    for error, kwargs, words in cases:
        with pytest.raises(error) as info:
            c.completions.create(**kwargs)
        assert info.value.body["type"] == "invalid_request_error"
        assert words in info.value.body["message"]
    bad_key = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    r = httpx.post(url + "/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "JSON" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": NAME, "messages": "hi"},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert httpx.get(url + "/health").status_code == 200  # still alive after all that


def test_full_queue_answers_429(served, tiny_checkpoint):
    engine = AsyncLLM(LLM(tiny_checkpoint("llama")), max_queue=0)
    server = Server(create_app(engine, NAME))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=NAME, prompt="hi", max_tokens=4)
    finally:
        server.stop()
        engine.shutdown()


def test_aborting_a_stream_frees_its_blocks(served):
    url = served["server"].url
    aborted = metric(url, "tunelab_requests_aborted_total")
    body = {"model": NAME, "prompt": "The quick brown fox", "max_tokens": 230, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # one chunk, then hang up
    deadline = time.time() + 10
    while metric(url, "tunelab_requests_aborted_total") == aborted:
        assert time.time() < deadline, "the request was not aborted"
        time.sleep(0.05)
    while metric(url, "tunelab_kv_blocks_used") != 0:
        assert time.time() < deadline, "blocks were not freed"
        time.sleep(0.05)
    assert metric(url, "tunelab_running_sequences") == 0
    assert metric(url, "tunelab_requests_total") >= 1


def test_a_failing_step_fails_its_request_not_the_server(served, monkeypatch):
    runner = served["engine"].llm.runner
    real_run, calls = runner.run, []

    def broken_once(seqs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return real_run(seqs)

    monkeypatch.setattr(runner, "run", broken_once)
    with pytest.raises(openai.InternalServerError):
        served["client"].completions.create(model=NAME, prompt="hi", max_tokens=4, temperature=0)
    r = served["client"].completions.create(model=NAME, prompt="hi", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1
    assert metric(served["server"].url, "tunelab_kv_blocks_used") == 0


def test_concurrent_requests_batch_together_and_match_alone(served):
    from concurrent.futures import ThreadPoolExecutor

    c, tok = served["client"], served["hf_tok"]
    prompts = ["The quick brown fox", "Paris is", "def add(a, b):\n", "Hello, how are you", "LoRA trains", "Ünï"]

    def ask(prompt):
        return c.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(prompts)) as pool:
        texts = list(pool.map(ask, prompts))
    for prompt, text in zip(prompts, texts):
        assert text == hf_text(served["ref"], tok, tok(prompt)["input_ids"], 12)
