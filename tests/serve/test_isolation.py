"""One bad request never hurts the others: 24 concurrent streams plus one poison request -> 24 complete normally."""

from __future__ import annotations

import asyncio

import httpx

from http_server import MODEL
from http_server import metric

PROMPTS = ["The quick brown fox", "Paris is", "Hello, how are", "def add(a, b):", "LoRA trains", "Ünï"]


async def _stream(client, url, body):
    async with client.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        status, events = r.status_code, []
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(__import__("json").loads(line[6:]))
        return status, events


def _run_24_and(poison_body, tiny_server, monkeypatch=None):
    url = tiny_server["url"]
    bodies = [{"model": MODEL, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 12, "temperature": 0}
              for i in range(24)]

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            innocent = [asyncio.create_task(_stream(client, url, b)) for b in bodies]
            await asyncio.sleep(0.2)  # the poison arrives while the others are decoding
            poison = await client.post(url + "/v1/completions", json=poison_body)
            return await asyncio.gather(*innocent), poison

    return asyncio.run(main())


def _expected(tiny_server):
    """Each prompt's text when it runs alone."""
    c = tiny_server["client"]
    return {p: c.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0).choices[0].text
            for p in PROMPTS}


def test_a_tiny_temperature_is_greedy_and_harms_nobody(tiny_server):
    expected = _expected(tiny_server)
    results, poison = _run_24_and({"model": MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 1e-300},
                                  tiny_server)
    assert poison.status_code == 200, poison.text
    for i, (status, events) in enumerate(results):
        assert status == 200 and "error" not in events[-1], events[-1]
        text = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
        assert text == expected[PROMPTS[i % len(PROMPTS)]], (i, repr(text), repr(expected[PROMPTS[i % len(PROMPTS)]]))


def test_a_request_that_breaks_the_engine_fails_alone(tiny_server, monkeypatch):
    expected = _expected(tiny_server)
    llm = tiny_server["engine"].llm
    poison_ids = llm.tokenizer.encode("Berlin is the capital")
    real_run = llm.runner.run

    def run(seqs):
        if any(s.prompt_ids == poison_ids for s in seqs):
            raise RuntimeError("simulated failure caused by one request")
        return real_run(seqs)

    monkeypatch.setattr(llm.runner, "run", run)
    failed = metric(tiny_server["url"], "tunelab_requests_failed_total")
    results, poison = _run_24_and({"model": MODEL, "prompt": poison_ids, "max_tokens": 4}, tiny_server)
    assert poison.status_code == 500 and poison.json()["error"]["type"] == "server_error"
    assert "simulated failure" in poison.json()["error"]["message"]
    for i, (status, events) in enumerate(results):
        assert status == 200 and "error" not in events[-1], events[-1]
        text = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
        assert text == expected[PROMPTS[i % len(PROMPTS)]], (i, repr(text), repr(expected[PROMPTS[i % len(PROMPTS)]]))
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert metric(tiny_server["url"], "tunelab_requests_failed_total") == failed + 1
    assert metric(tiny_server["url"], "tunelab_kv_blocks_used") == 0


def test_a_stream_that_fails_midway_gets_an_error_event_and_the_others_go_on(tiny_server, monkeypatch):
    expected = _expected(tiny_server)
    llm = tiny_server["engine"].llm
    poison_ids = llm.tokenizer.encode("Berlin is the capital")
    real_run = llm.runner.run

    def run(seqs):
        if any(s.prompt_ids == poison_ids and len(s.output_ids) >= 3 for s in seqs):
            raise RuntimeError("simulated failure after three tokens")
        return real_run(seqs)

    monkeypatch.setattr(llm.runner, "run", run)

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": MODEL, "max_tokens": 12, "temperature": 0}
            innocent = [asyncio.create_task(_stream(client, tiny_server["url"], {**body, "prompt": PROMPTS[i % 6]}))
                        for i in range(24)]
            poison = await _stream(client, tiny_server["url"], {**body, "prompt": poison_ids, "ignore_eos": True})
            return await asyncio.gather(*innocent), poison

    results, (status, events) = asyncio.run(main())
    assert status == 200 and "simulated failure" in events[-1]["error"]["message"]
    assert sum(1 for e in events if "choices" in e) >= 1  # it had streamed before failing
    for i, (status, events) in enumerate(results):
        assert status == 200 and "error" not in events[-1]
        assert "".join(e["choices"][0]["text"] for e in events) == expected[PROMPTS[i % len(PROMPTS)]]
    assert metric(tiny_server["url"], "tunelab_kv_blocks_used") == 0
