"""The whole stack agrees with itself: an eval through the OpenAI-compatible `tunelab serve`
(chat and completion style) gives the same outputs as the in-process `tunelab` provider."""

from __future__ import annotations

import json

from eval_helpers import serve_subprocess as _serve

from tunelab.evals.config import EvalConfig
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store


def test_served_and_in_process_outputs_agree(tmp_path, tiny_checkpoint):
    ckpt = tiny_checkpoint("qwen2")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in ("fox", "Paris", "LoRA")))
    proc, base_url = _serve(ckpt)
    try:
        params = {"temperature": 0, "max_tokens": 8}
        cfg = EvalConfig.from_dict({
            "dataset": "data.jsonl",
            "prompts": [{"id": "p", "template": "Tell me about {{ topic }}"}],
            "providers": [
                {"id": "http-chat", "type": "openai", "base_url": base_url, "model": "tiny", "params": params},
                {"id": "http-text", "type": "openai", "base_url": base_url, "model": "tiny", "chat": False,
                 "params": params},
                {"id": "local-chat", "type": "tunelab", "model": str(ckpt), "params": params},
                {"id": "local-text", "type": "tunelab", "model": str(ckpt), "chat": False, "params": params},
            ],
            "metrics": ["length"],
        }, source="eval.yaml", base_dir=tmp_path)
        stats = run_eval(cfg, tmp_path / "r.db")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert stats.errors == 0
    with Store(tmp_path / "r.db") as store:
        rows = store.results(stats.run_id)
    out = {(r.item_id, r.provider_id): (r.output, r.prompt_tokens, r.completion_tokens) for r in rows}
    for item in {r.item_id for r in rows}:
        assert out[item, "http-chat"] == out[item, "local-chat"]
        assert out[item, "http-text"] == out[item, "local-text"]
        # The chat template really was applied on one path and not on the other.
        assert out[item, "http-chat"][1] > out[item, "http-text"][1]
