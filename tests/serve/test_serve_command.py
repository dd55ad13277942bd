"""`tunelab serve` as a user runs it: a subprocess on a free port, reached with the openai client."""

import os
import socket
import subprocess
import sys
import time

import httpx
import openai


def test_tunelab_serve_starts_and_answers(tiny_checkpoint):
    path = tiny_checkpoint("qwen2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "tunelab", "serve", str(path), "--port", str(port), "--api-key", "k",
           "--served-model-name", "tiny", "--max-queue", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "tunelab serve did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        r = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0)
        assert r.usage.completion_tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_bad_adapter_flag_is_a_clear_error(tiny_checkpoint):
    r = subprocess.run([sys.executable, "-m", "tunelab", "serve", str(tiny_checkpoint("qwen2")), "--adapter", "oops"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "name=DIR" in r.stderr
