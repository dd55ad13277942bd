"""`tunelab bench eval`: the harness's own cost per item.

A fake OpenAI-compatible server in a child process answers every request after
a fixed delay. N items at concurrency C then ideally take ceil(N/C) × delay;
whatever the harness adds beyond that, divided by N, is its overhead per item.
The same run also times the bare `openai` client firing the same requests (the
floor any harness built on that client shares) and the cached rerun."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchResult:
    items: int
    concurrency: int
    delay_s: float
    ideal_s: float
    harness_s: float
    bare_client_s: float
    cached_rerun_s: float
    provider_calls: int
    rerun_calls: int

    @property
    def overhead_ms_per_item(self) -> float:
        return 1000 * (self.harness_s - self.ideal_s) / self.items

    @property
    def client_overhead_ms_per_item(self) -> float:
        return 1000 * (self.bare_client_s - self.ideal_s) / self.items


def bench_eval(items: int = 1000, concurrency: int = 32, delay_s: float = 0.05) -> BenchResult:
    from tunelab.evals.config import EvalConfig
    from tunelab.evals.fake_server import serve_forever
    from tunelab.evals.runner import run_eval

    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=serve_forever, args=(0, delay_s, ready), daemon=True)
    server.start()
    try:
        port = ready.get(timeout=30)
        base_url = f"http://127.0.0.1:{port}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data.jsonl"
            data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"what is {i} plus {i}?",
                                                "reference": f"{i + i}"}) + "\n" for i in range(items)))
            cfg = EvalConfig.from_dict({
                "dataset": str(data),
                "prompts": [{"id": "p", "template": "Answer briefly: {{ question }}"}],
                "providers": [{"id": "fake", "type": "openai", "base_url": base_url, "model": "fake",
                               "params": {"temperature": 0, "max_tokens": 16},
                               "price": {"input_per_1m": 0.15, "output_per_1m": 0.6}}],
                "metrics": ["exact_match", "contains", "length"],
                "concurrency": concurrency,
            }, source="<bench>", base_dir=tmp)
            bare = asyncio.run(_bare_client(base_url, items, concurrency))
            db = Path(tmp) / "bench.db"
            start = time.perf_counter()
            stats = run_eval(cfg, db)
            harness = time.perf_counter() - start
            start = time.perf_counter()
            rerun = run_eval(cfg, db)
            cached = time.perf_counter() - start
    finally:
        server.terminate()
        server.join(5)
    return BenchResult(items, concurrency, delay_s, math.ceil(items / concurrency) * delay_s, harness, bare, cached,
                       stats.provider_calls, rerun.provider_calls)


async def _bare_client(base_url: str, items: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": f"Answer briefly: what is {i} plus {i}?"}],
                temperature=0, max_tokens=16)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(items)))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed
