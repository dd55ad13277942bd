"""A bounded load check of a running `tunelab serve`: N concurrent streams on loopback, then the server's health.

    python -m tunelab.serve.loadtest http://127.0.0.1:8000 MODEL --streams 256 --max-tokens 32

Every stream must end with [DONE] and no error event; afterwards no KV block may be in use. Loopback only: this
opens hundreds of connections at once and is meant for your own server, never someone else's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from urllib.parse import urlparse

import httpx

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):", "Hello, how are you", "Once upon"]


def run_load(url: str, model: str, streams: int = 256, max_tokens: int = 32, chat: bool = True) -> dict:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"{url}: the load check only targets a server on this machine (loopback)")
    return asyncio.run(_load(url.rstrip("/"), model, streams, max_tokens, chat))


async def _load(url, model, streams, max_tokens, chat) -> dict:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*[_one(client, url, model, i, max_tokens, chat) for i in range(streams)])
        wall = time.perf_counter() - start
        metrics = (await client.get(url + "/metrics")).text
    statuses = Counter(status for status, _, _ in results)
    return {
        "streams": streams, "wall_s": round(wall, 2), "by_status": dict(sorted(statuses.items())),
        "completed": sum(1 for status, done, error in results if status == 200 and done and not error),
        "errors": [error for _, _, error in results if error][:5],
        "tokens": sum(n for _, n, _ in results if isinstance(n, int)),
        "kv_blocks_used": _metric(metrics, "tunelab_kv_blocks_used"),
        "running": _metric(metrics, "tunelab_running_sequences"),
    }


async def _one(client, url, model, i, max_tokens, chat):
    prompt = PROMPTS[i % len(PROMPTS)]
    body = {"model": model, "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "stream": True}
    if chat:
        path, body = "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    else:
        path, body = "/v1/completions", {**body, "prompt": prompt}
    chunks, error, done = 0, None, False
    async with client.stream("POST", url + path, json=body) as r:
        if r.status_code != 200:
            return r.status_code, 0, (await r.aread()).decode(errors="replace")[:200]
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    error = event["error"]["message"]
                chunks += 1
    return 200, chunks if done else 0, error


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--completions", action="store_true", help="/v1/completions instead of chat")
    args = ap.parse_args()
    print(json.dumps(run_load(args.url, args.model, args.streams, args.max_tokens, not args.completions), indent=2))


if __name__ == "__main__":
    main()
