"""A uvicorn server on a free loopback port in a background thread, a reader for server-sent events, /metrics, and
a random PEFT adapter for a tiny checkpoint."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import peft
import torch
import uvicorn
from transformers import AutoModelForCausalLM


MODEL = "tiny"  # the name the shared tiny server (conftest.py) serves its base model under


class Server:
    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def sse_events(response: httpx.Response) -> list:
    """The JSON events of a streamed response (up to [DONE])."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            if data == "[DONE]":
                break
            events.append(json.loads(data))
    return events


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def make_peft_adapter(base_path, out_dir, seed):
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(out_dir)
    return model.eval()
