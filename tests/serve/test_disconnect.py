"""A client that leaves aborts its requests, streaming or not, and their KV blocks are freed."""

from __future__ import annotations

import httpx
import pytest

from http_server import MODEL, metric, wait_for


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": MODEL, "prompt": "The quick brown fox", "n": 2}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 3}),
])
def test_a_non_streaming_client_that_times_out_aborts_its_requests(tiny_server, path, body):
    url = tiny_server["url"]
    aborted = metric(url, "tunelab_requests_aborted_total")
    generated = metric(url, "tunelab_generation_tokens_total")
    clients = 4
    choices = clients * body.get("n", 1)
    for _ in range(clients):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + path, json={**body, "max_tokens": 240, "ignore_eos": True}, timeout=0.2)
    wait_for(lambda: metric(url, "tunelab_requests_aborted_total") == aborted + choices, what="aborts")
    wait_for(lambda: metric(url, "tunelab_kv_blocks_used") == 0, what="blocks freed")
    assert metric(url, "tunelab_running_sequences") == 0
    # They stopped early: nowhere near the 240 tokens each would have decoded.
    assert metric(url, "tunelab_generation_tokens_total") - generated < choices * 240
