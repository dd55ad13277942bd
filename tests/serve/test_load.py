"""A bounded load on loopback: every stream completes, no 5xx, and all KV blocks are free afterwards.
(`python -m tunelab.serve.loadtest URL MODEL --streams 256` is the full-size run; this is the quick one.)"""

from __future__ import annotations

import pytest

from http_server import MODEL
from tunelab.serve.loadtest import run_load


def test_48_concurrent_streams_complete_and_free_every_block(tiny_server):
    result = run_load(tiny_server["url"], MODEL, streams=48, max_tokens=16)
    assert result["by_status"] == {200: 48}, result
    assert result["completed"] == 48 and not result["errors"], result
    assert result["kv_blocks_used"] == 0 and result["running"] == 0, result


def test_only_loopback():
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://example.com", MODEL, streams=1)


def test_the_documented_command_runs(tiny_server):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tunelab.serve.loadtest", tiny_server["url"], MODEL, "--streams", "4",
                          "--max-tokens", "4"], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["completed"] == 4 and result["kv_blocks_used"] == 0
