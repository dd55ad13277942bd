"""Shared test helpers: a deterministic fake model/judge and a config builder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tunelab.evals.config import EvalConfig
from tunelab.evals.fake_server import FakeOpenAI

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid"}


def answer(body: dict[str, Any]) -> str:
    """Deterministic 'model': capitals for known countries (Spain answered wrongly
    on purpose), a judge-style reply for judge prompts."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    last = body["messages"][-1]["content"]
    if body.get("response_format"):  # a judge asking for structured output gets the schema's JSON
        props = body["response_format"]["json_schema"]["schema"]["properties"]
        if "winner" in props:
            plain = answer(dict(body, response_format=None, messages=[
                {"role": "system", "content": "[[A]]"}, *body["messages"][1:]]))
            return json.dumps({"reasoning": "compared", "winner": plain.split("[[")[-1][0]})
        good = "Paris" in last.split("[Assistant's answer]")[1]
        return json.dumps({"reasoning": "matches the reference" if good else "not the reference",
                           "score": 9 if good else 2})
    if "[[A]]" in system:  # pairwise judge: prefers the answer that says Paris/Berlin/Rome correctly
        a = last.split("[Assistant A's answer]")[1].split("[Assistant B's answer]")[0]
        b = last.split("[Assistant B's answer]")[1]
        ok = lambda s: any(c in s for c in ("Paris", "Berlin", "Rome"))  # noqa: E731
        return "Comparing. [[A]]" if ok(a) and not ok(b) else "Comparing. [[B]]" if ok(b) and not ok(a) else "[[C]]"
    if "Score: N" in last:  # rubric judge
        return "The answer matches the reference. Score: 9" if "Paris" in last.split("[Assistant's answer]")[1] \
            else "Not the reference answer.\nScore: 2"
    for country, city in CAPITALS.items():
        if country in last:
            return "Barcelona" if country == "Spain" else (f"{city}." if "Be polite" in system else city)
    return "I don't know"


def make_config(tmp_path: Path, server: FakeOpenAI, **overrides: Any) -> EvalConfig:
    data: dict[str, Any] = {
        "description": "capitals",
        "dataset": "data.jsonl",
        "prompts": [{"id": "zero-shot", "template": 'Answer with the city name only.\nCountry: """{{ country }}"""'}],
        "providers": [{"id": "small", "type": "openai", "base_url": server.base_url, "model": "fake-small",
                       "params": {"temperature": 0, "max_tokens": 16},
                       "price": {"input_per_1m": 0.15, "output_per_1m": 0.60}}],
        "metrics": ["exact_match", {"name": "regex", "pattern": "^[A-Z]"}],
        "retry": {"max_retries": 2, "backoff_s": 0.001, "timeout_s": 5},
        "concurrency": 4,
    }
    data.update(overrides)
    return EvalConfig.from_dict(data, source=str(tmp_path / "eval.yaml"), base_dir=tmp_path)


def serve_subprocess(path):
    """`tunelab serve PATH` on a free loopback port -> (process, base_url); the caller terminates it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", str(path), "--port", str(port),
                             "--served-model-name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ})  # fmt: skip
    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        if time.time() >= deadline:
            proc.kill()  # a failed start must not leave the server running after the test
            raise AssertionError("tunelab serve did not come up")
        time.sleep(0.2)
