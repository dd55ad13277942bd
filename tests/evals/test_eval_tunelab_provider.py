"""The in-process `tunelab` provider: a tiny checkpoint through tunelab.engine,
checked against tunelab.models.generation on the same chat-templated prompt, and
an HTTP-only eval never importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

from tunelab.evals.config import EvalConfig
from tunelab.evals.runner import run_eval
from tunelab.evals.store import Store


def test_tunelab_provider_matches_direct_generation(tmp_path, tiny_checkpoint):
    from tunelab.models import load_pretrained
    from tunelab.models.generation import generate

    ckpt = tiny_checkpoint("llama")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in ("fox", "Paris", "LoRA")))
    cfg = EvalConfig.from_dict({
        "dataset": "data.jsonl",
        "prompts": [{"id": "p", "template": "Tell me about {{ topic }}"}],
        "providers": [{"id": "local", "type": "tunelab", "model": str(ckpt), "params": {"max_tokens": 8}}],
        "metrics": ["length"],
        "concurrency": 3,
    }, source="eval.yaml", base_dir=tmp_path)
    stats = run_eval(cfg, tmp_path / "r.db")
    assert stats.errors == 0
    with Store(tmp_path / "r.db") as store:
        rows = store.results(stats.run_id)

    model, tok = load_pretrained(ckpt)
    for row in rows:
        prompt = tok.apply_chat_template(row.rendered, add_generation_prompt=True)
        ref = generate(model, tok, tok.encode(prompt, add_special_tokens=False), max_new_tokens=8)
        assert row.output == ref.text
        assert row.completion_tokens == ref.completion_tokens and row.scores["length"] == len(ref.text)


def test_http_only_eval_does_not_import_torch(tmp_path):
    code = ("import sys; import tunelab.evals.runner, tunelab.evals.commands, tunelab.evals.report; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_completion_style_sends_the_text_as_written(tmp_path, tiny_checkpoint):
    """`chat: false`: a base model sees the rendered template, not a chat-templated message."""
    from tunelab.models import load_pretrained
    from tunelab.models.generation import generate

    ckpt = tiny_checkpoint("qwen2")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in ("fox", "Paris")))
    cfg = EvalConfig.from_dict({
        "dataset": "data.jsonl",
        "prompts": [{"id": "p", "template": "Tell me about {{ topic }}"}],
        "providers": [{"id": "local", "type": "tunelab", "model": str(ckpt), "chat": False,
                       "params": {"max_tokens": 8}}],
        "metrics": ["length"],
    }, source="eval.yaml", base_dir=tmp_path)
    stats = run_eval(cfg, tmp_path / "r.db")
    assert stats.errors == 0
    model, tok = load_pretrained(ckpt)
    with Store(tmp_path / "r.db") as store:
        for row in store.results(stats.run_id):
            ref = generate(model, tok, f"Tell me about {row.vars['topic']}", max_new_tokens=8)
            assert row.output == ref.text and row.prompt_tokens == ref.prompt_tokens


def test_chat_must_be_a_boolean(tmp_path):
    import pytest

    from tunelab.evals.errors import EvalError

    (tmp_path / "data.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(EvalError, match=r"providers\[0\]\.chat: expected true or false"):
        EvalConfig.from_dict({"dataset": "data.jsonl", "prompts": [{"id": "p", "template": "{{ x }}"}],
                              "providers": [{"id": "l", "type": "tunelab", "model": "m", "chat": "no"}]},
                             source="eval.yaml", base_dir=tmp_path)


def test_one_bad_prompt_does_not_fail_its_batch(tmp_path, tiny_checkpoint):
    ckpt = tiny_checkpoint("llama")  # context: 256 positions
    rows = [{"topic": "fox"}, {"topic": "word " * 400}, {"topic": "Paris"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig.from_dict({
        "dataset": "data.jsonl",
        "prompts": [{"id": "p", "template": "Tell me about {{ topic }}"}],
        "providers": [{"id": "local", "type": "tunelab", "model": str(ckpt), "chat": False,
                       "params": {"max_tokens": 4}}],
        "metrics": ["length"],
        "concurrency": 3,
    }, source="eval.yaml", base_dir=tmp_path)
    stats = run_eval(cfg, tmp_path / "r.db")
    with Store(tmp_path / "r.db") as store:
        rows = {r.line: r for r in store.results(stats.run_id)}
    assert stats.errors == 1
    assert rows[2].error and "local" in rows[2].error and rows[2].output is None
    assert rows[1].error is None and rows[3].error is None and rows[1].completion_tokens == 4


def test_local_model_and_adapter_paths_are_relative_to_the_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "data.jsonl").write_text('{"x": 1}\n')
    cfg = EvalConfig.from_dict({"dataset": "data.jsonl", "prompts": [{"id": "p", "template": "{{ x }}"}],
                                "providers": [{"id": "l", "type": "tunelab", "model": "m", "adapter": "missing"},
                                              {"id": "h", "type": "tunelab", "model": "org/name"}]},
                               source="eval.yaml", base_dir=tmp_path)
    assert cfg.providers[0].model == str(tmp_path / "m")
    assert cfg.providers[0].adapter == "missing" and cfg.providers[1].model == "org/name"


def test_each_request_records_its_own_latency(tiny_checkpoint):
    """Two requests in flight together: the one that stops after one token reports a shorter latency than the one
    that decodes forty (the old provider gave every request its whole batch's wall time)."""
    import asyncio

    from tunelab.evals.config import ProviderConfig
    from tunelab.evals.providers import TunelabProvider

    provider = TunelabProvider(ProviderConfig(id="local", type="tunelab", model=str(tiny_checkpoint("llama")),
                                              chat=False))
    messages = [{"role": "user", "content": "The quick brown fox"}]

    async def both():
        try:
            return await asyncio.gather(provider.complete(messages, {"max_tokens": 1}),
                                        provider.complete(messages, {"max_tokens": 40}))
        finally:
            await provider.aclose()

    short, long = asyncio.run(both())
    assert (short.completion_tokens, long.completion_tokens) == (1, 40)
    assert short.latency_s < long.latency_s


def test_dtype_and_engine_options_reach_the_engine(tmp_path, tiny_checkpoint, monkeypatch):
    """`dtype:` and `engine:` of a tunelab provider are LLM's own arguments; the precision is part of the cache key,
    the engine options (which do not change outputs) are not."""
    import torch

    from tunelab import engine
    from tunelab.evals.cache import response_key

    made = []
    real = engine.LLM

    def spy(*args, **kwargs):
        llm = real(*args, **kwargs)
        made.append((kwargs, llm))
        return llm

    monkeypatch.setattr(engine, "LLM", spy)
    ckpt = tiny_checkpoint("llama")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"topic": t}) + "\n" for t in ("fox", "Paris")))
    provider = {"id": "local", "type": "tunelab", "model": str(ckpt), "params": {"max_tokens": 4},
                "dtype": "bfloat16", "engine": {"enable_prefix_caching": False, "max_num_seqs": 2}}
    cfg = EvalConfig.from_dict({"dataset": "data.jsonl", "prompts": [{"id": "p", "template": "About {{ topic }}"}],
                                "providers": [provider], "metrics": ["length"]}, source="eval.yaml", base_dir=tmp_path)
    assert run_eval(cfg, tmp_path / "r.db").errors == 0
    ((kwargs, llm),) = made
    assert kwargs["dtype"] == "bfloat16" and next(llm.model.parameters()).dtype == torch.bfloat16
    assert not llm.block_manager.prefix_caching and llm.scheduler.max_num_seqs == 2
    stored = cfg.to_dict()["providers"][0]  # a run's stored config says its precision and engine options
    assert stored["dtype"] == "bfloat16" and stored["engine"] == provider["engine"]
    assert EvalConfig.from_dict({**cfg.to_dict(), "dataset": "data.jsonl"}, source="again.yaml",
                                base_dir=tmp_path).providers[0].engine == provider["engine"]
    (prov,) = cfg.providers
    key = response_key(prov, {}, [], 0)
    prov.engine = {}
    assert response_key(prov, {}, [], 0) == key
    prov.dtype = "float16"
    assert response_key(prov, {}, [], 0) != key


def test_bad_dtype_and_engine_options_name_the_field(tmp_path):
    import pytest

    from tunelab.evals.config import EvalError

    base = {"dataset": "data.jsonl", "prompts": [{"id": "p", "template": "x"}], "metrics": ["length"]}
    cases = [({"dtype": "int3"}, "providers[0].dtype: expected float32, bfloat16 or float16"),
             ({"engine": {"prefix": True}}, "providers[0].engine.prefix: unknown field"),
             ({"engine": {"max_num_seqs": 0}}, "providers[0].engine.max_num_seqs: expected a positive integer"),
             ({"engine": {"enable_prefix_caching": "no"}}, "providers[0].engine.enable_prefix_caching: expected true")]
    for extra, message in cases:
        provider = {"id": "local", "type": "tunelab", "model": "m", **extra}
        with pytest.raises(EvalError, match=message.replace("[", r"\[").replace("]", r"\]")):
            EvalConfig.from_dict({**base, "providers": [provider]}, source="eval.yaml", base_dir=tmp_path)
    with pytest.raises(EvalError, match="dtype: only for type tunelab"):
        EvalConfig.from_dict({**base, "providers": [{"id": "x", "base_url": "http://h/v1", "model": "m",
                                                     "dtype": "float16"}]}, source="eval.yaml", base_dir=tmp_path)
