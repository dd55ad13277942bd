"""LoRA on tunelab's own Transformer: targets and saved keys use Hugging Face checkpoint names, and adapters cross
to and from PEFT on the equivalent transformers model with equal logits."""

import json

import peft
import pytest
import torch
from lora_models import randomize_lora
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab.lora import (LoraConfig, LoraError, add, inject, load_adapter, merge_and_unload, per_row_adapters,
                          save_adapter, set_active)
from tunelab.models import load_pretrained

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CASES = {
    "gpt2": dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc", "wte"]),
    "llama": dict(r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True, modules_to_save=["lm_head"]),
    "qwen2": dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "embed_tokens"], bias="lora_only"),
}


def _ids():
    return torch.randint(3, 300, (2, 11), generator=torch.Generator().manual_seed(4))


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _ours(path):
    return load_pretrained(path, dtype="float32")[0]


@pytest.mark.parametrize("family", sorted(CASES))
def test_peft_adapter_on_transformers_loads_into_tunelab_model(tiny_checkpoint, tmp_path, family):
    path = tiny_checkpoint(family)
    pm = peft.get_peft_model(_hf(path), peft.LoraConfig(**CASES[family])).eval()
    randomize_lora(pm, seed=11)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn_like(p) * 0.05)
        expected = pm(_ids()).logits
    pm.save_pretrained(tmp_path)
    ours = load_adapter(_ours(path), tmp_path)
    with torch.no_grad():
        got = ours(_ids())
    assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("family", sorted(CASES))
def test_tunelab_adapter_loads_into_peft_on_transformers(tiny_checkpoint, tmp_path, family):
    path = tiny_checkpoint(family)
    kw = CASES[family]
    ours = inject(_ours(path), LoraConfig(r=kw["r"], alpha=kw["lora_alpha"], target_modules=kw["target_modules"],
                                          use_rslora=kw.get("use_rslora", False), bias=kw.get("bias", "none"),
                                          modules_to_save=kw.get("modules_to_save")))
    randomize_lora(ours, seed=12)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn_like(p) * 0.05)
        expected = ours(_ids())
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(_hf(path), tmp_path).eval()
    with torch.no_grad():
        got = theirs(_ids()).logits
    assert (got - expected).abs().max() <= 1e-4


def test_gpt2_fused_qkv_is_targeted_and_saved_as_c_attn(tiny_checkpoint, tmp_path):
    model = inject(_ours(tiny_checkpoint("gpt2")), LoraConfig(r=4, target_modules=["c_attn"]))
    assert type(model.layers[0].self_attn.qkv_proj).__name__ == "LoraLinear"
    save_adapter(model, tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight" in keys
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"] and config["fan_in_fan_out"] is True
    # tunelab's canonical names work too, and the error for a bad name shows both spellings.
    other = inject(_ours(tiny_checkpoint("gpt2")), LoraConfig(r=2, target_modules=["qkv_proj"]))
    assert type(other.layers[1].self_attn.qkv_proj).__name__ == "LoraLinear"
    with pytest.raises(LoraError, match=r"transformer\.h\.0\.attn\.c_attn = layers\.0\.self_attn\.qkv_proj"):
        inject(_ours(tiny_checkpoint("gpt2")), LoraConfig(target_modules=["q_proj"]))


def test_mixed_rows_and_merge_on_tunelab_model(tiny_checkpoint):
    model = _ours(tiny_checkpoint("llama"))
    inject(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]), "a")
    add(model, LoraConfig(r=8, target_modules="all-linear"), "b")
    randomize_lora(model, seed=2)
    ids = _ids()
    with torch.no_grad(), per_row_adapters(model, ["b", "a"]):
        mixed = model(ids)
    with torch.no_grad():
        set_active(model, "b")
        b = model(ids[:1])
        set_active(model, "a")
        a = model(ids[1:])
        assert (mixed - torch.cat([b, a])).abs().max() <= 1e-5
        merge_and_unload(model)
        assert (model(ids[1:]) - a).abs().max() <= 1e-5


@pytest.mark.parametrize("targets,extra", [
    (["qkv_proj", "up_proj"], {"exclude_modules": ["layers.0.self_attn.qkv_proj"]}),  # canonical spelling
    (r"layers\.1\.mlp\..*", {}),                                                      # canonical regex
    (["c_attn", "c_proj"], {"layers_to_transform": [1], "exclude_modules": r".*mlp.*"}),
])
def test_saved_config_makes_peft_wrap_the_same_layers(tiny_checkpoint, tmp_path, targets, extra):
    path = tiny_checkpoint("gpt2")
    ours = inject(_ours(path), LoraConfig(r=2, target_modules=targets, **extra))
    randomize_lora(ours, seed=3)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(_hf(path), tmp_path)
    wrapped = {n.removeprefix("base_model.model.") for n, m in theirs.named_modules() if hasattr(m, "lora_A")
               and hasattr(m, "base_layer")}
    assert wrapped == {ours.checkpoint_name(n) for n, m in ours.named_modules() if hasattr(m, "lora_A")}
    with torch.no_grad():
        assert (theirs(_ids()).logits - ours(_ids())).abs().max() <= 1e-4
