"""A deterministic OpenAI-compatible chat server on 127.0.0.1, for tests and
`tunelab bench eval`: real HTTP, a call counter, a fixed delay, and hooks to
inject failures or judge-style replies. Threads, not asyncio, so the fixed
delay is a plain sleep that costs the client's process nothing."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# A responder gets the request body and returns the reply text, or (status, body) to fail,
# or {"content": text, "logprobs": {...}} to add an OpenAI-style logprobs object to the choice.
Responder = Callable[[dict[str, Any]], "str | tuple[int, str] | dict[str, Any]"]


def echo(body: dict[str, Any]) -> str:
    """Default reply: the last user message, reversed word order -> deterministic, distinct per prompt."""
    if "prompt" in body:  # /v1/completions
        return " ".join(reversed(str(body["prompt"]).split()))
    user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    return " ".join(reversed((user[-1] if user else "").split()))


class FakeOpenAI:
    def __init__(self, responder: Responder = echo, *, delay_s: float = 0.0, port: int = 0) -> None:
        self.responder = responder
        self.delay_s = delay_s
        self.calls = 0
        self.requests: list[dict[str, Any]] = []
        self.fail_queue: list[int] = []       # statuses to return for the next calls, in order
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> "FakeOpenAI":
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.requests.clear()

    def _reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.calls += 1
            self.requests.append(body)
            forced = self.fail_queue.pop(0) if self.fail_queue else None
        if self.delay_s:
            time.sleep(self.delay_s)
        if forced is not None:
            return forced, {"error": {"message": f"injected failure {forced}", "type": "server_error"}}
        result = self.responder(body)
        if isinstance(result, tuple):
            return result[0], {"error": {"message": result[1], "type": "server_error"}}
        logprobs = None
        if isinstance(result, dict):
            result, logprobs = result["content"], result.get("logprobs")
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        if "prompt" in body:  # /v1/completions
            prompt_tokens = len(str(body["prompt"]).split())
            return 200, {
                "id": f"cmpl-{self.calls}", "object": "text_completion", "created": 0, "model": body.get("model", ""),
                "choices": [{"index": 0, "text": result, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(result.split()),
                          "total_tokens": prompt_tokens + len(result.split())},
            }
        return 200, {
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": 0, "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result}, "finish_reason": "stop",
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(result.split()),
                      "total_tokens": prompt_tokens + len(result.split())},
        }


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when 32 clients connect at once.
    request_queue_size = 512
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):   # a client that went away is no news
            super().handle_error(request, client_address)


def _handler(owner: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, like a real server

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload = owner._reply(body)
            except Exception as exc:  # noqa: BLE001 - a fake server still never crashes
                status, payload = 400, {"error": {"message": str(exc)}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):   # the client went away (a test killed it)
                self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def serve_forever(port: int, delay_s: float, ready: Any) -> None:
    """Entry point for running the server in a child process (the benchmark)."""
    server = FakeOpenAI(delay_s=delay_s, port=port)
    ready.put(server.server.server_address[1])
    server.server.serve_forever()
