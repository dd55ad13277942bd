"""Bad checkpoints fail with a message a user can act on."""

import json

import pytest
import torch

from tunelab.models import ModelConfig, ModelError, load_pretrained


def test_unknown_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match=r"'bert' is not supported; tunelab supports: llama, mistral, qwen2, gpt2"):
        load_pretrained(tmp_path)


def test_pickle_weights_are_refused(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only from safetensors"):
        load_pretrained(tmp_path)


def test_offline_hub_id_says_how_to_use_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="pass its local directory path"):
        load_pretrained("some-org/some-model-that-is-not-cached")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_pretrained(tmp_path / "nope" / "deeper")


def test_shape_mismatch_names_the_tensor(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"mlp\.(gate|up|down)_proj\.weight' has shape"):
        load_pretrained(tmp_path)


def test_bad_json_names_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    with pytest.raises(ModelError, match=r"config.json: not valid JSON \(line 3"):
        ModelConfig.from_file(tmp_path / "config.json")
