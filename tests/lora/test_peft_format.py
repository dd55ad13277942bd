"""PEFT is the oracle: adapters cross between PEFT and tunelab in both directions with equal logits."""

import json

import peft
import pytest
import torch
from lora_models import logits, randomize_lora, tiny_gpt2, tiny_llama
from safetensors.torch import load_file, save_file

from tunelab.lora import LoraConfig, LoraError, inject, load_adapter, save_adapter

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

CASES = [
    # (model builder, PEFT LoraConfig kwargs)
    (tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "embed_tokens"])),
    (tiny_llama, dict(r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True, init_lora_weights="gaussian")),
    (tiny_llama, dict(r=2, lora_alpha=4, target_modules=["down_proj"], modules_to_save=["lm_head"])),
    (tiny_gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "wte"], fan_in_fan_out=True)),
    (tiny_gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], bias="lora_only", fan_in_fan_out=True)),
]


def _peft_model(make, kwargs, seed=3):
    pm = peft.get_peft_model(make(), peft.LoraConfig(**kwargs))
    randomize_lora(pm, seed=seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad and "lora_" not in name:  # modules_to_save copies and trained biases
                p.add_(torch.randn_like(p) * 0.05)
    return pm.eval()


@pytest.mark.parametrize("make,kwargs", CASES)
def test_peft_saved_adapter_loads_into_tunelab(tmp_path, ids, make, kwargs):
    pm = _peft_model(make, kwargs)
    pm.save_pretrained(tmp_path)
    expected = logits(pm, ids)
    ours = load_adapter(make(), tmp_path, adapter_name="ft")
    got = logits(ours, ids)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got, logits(make(), ids), atol=1e-3)  # the adapter really changes the output


@pytest.mark.parametrize("make,kwargs", CASES)
def test_tunelab_saved_adapter_loads_into_peft(tmp_path, ids, make, kwargs):
    cfg = LoraConfig(r=kwargs["r"], alpha=kwargs["lora_alpha"], target_modules=kwargs["target_modules"],
                     use_rslora=kwargs.get("use_rslora", False), modules_to_save=kwargs.get("modules_to_save"),
                     bias=kwargs.get("bias", "none"))
    ours = inject(make(), cfg)
    randomize_lora(ours, seed=5)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if p.requires_grad and "lora_" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    expected = logits(ours, ids)
    save_adapter(ours, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["peft_type"] == "LORA" and written["r"] == kwargs["r"]
    assert list(written) == sorted(written)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    got = logits(theirs, ids)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_key_names_match_peft_exactly(tmp_path):
    kwargs = dict(r=4, lora_alpha=8, target_modules=["c_attn", "wte"])
    peft_dir, our_dir = tmp_path / "peft", tmp_path / "ours"
    _peft_model(tiny_gpt2, kwargs).save_pretrained(peft_dir)
    save_adapter(inject(tiny_gpt2(), LoraConfig(r=4, alpha=8, target_modules=["c_attn", "wte"])), our_dir)
    theirs = {k: v.shape for k, v in load_file(peft_dir / "adapter_model.safetensors").items()
              if ".base_layer." not in k}  # PEFT also stores the full base embedding table; we do not need it
    ours = {k: v.shape for k, v in load_file(our_dir / "adapter_model.safetensors").items()}
    assert ours == theirs
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in ours
    assert "base_model.model.transformer.wte.lora_embedding_A" in ours
    assert json.loads((our_dir / "adapter_config.json").read_text())["fan_in_fan_out"] is True


def test_pissa_round_trips_both_ways(tmp_path, ids):
    kwargs = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    pm = peft.get_peft_model(tiny_llama(), peft.LoraConfig(**kwargs))
    ours = inject(tiny_llama(), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], init="pissa"))
    # Same SVD recipe: identical factors and residual at initialisation, and the model still equals the base.
    assert torch.allclose(logits(ours, ids), logits(tiny_llama(), ids), atol=1e-5)
    assert torch.allclose(ours.model.layers[0].self_attn.q_proj.lora_A["default"].weight,
                          pm.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight, atol=1e-5)
    with torch.no_grad():
        for model in (pm, ours):
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.1)
    pm.save_pretrained(tmp_path / "peft")
    save_adapter(ours, tmp_path / "ours")
    assert torch.allclose(logits(load_adapter(tiny_llama(), tmp_path / "peft"), ids), logits(pm, ids), atol=1e-4)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "ours")
    assert torch.allclose(logits(theirs, ids), logits(ours, ids), atol=1e-4)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    _peft_model(tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    tensors[key] = torch.zeros(31, 4)
    save_file(tensors, path)
    model = tiny_llama()
    with pytest.raises(LoraError) as err:
        load_adapter(model, tmp_path)
    assert key in str(err.value) and "(31, 4)" in str(err.value) and "(32, 4)" in str(err.value)
    assert not any("lora_" in n for n, _ in model.named_parameters())  # a failed load leaves no half adapter


def test_unknown_key_and_unsupported_config_are_named(tmp_path):
    _peft_model(tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors["base_model.model.model.layers.0.self_attn.nope.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, path)
    with pytest.raises(LoraError, match="self_attn.nope"):
        load_adapter(tiny_llama(), tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoraError, match="use_dora"):
        load_adapter(tiny_llama(), tmp_path)


def test_two_loaded_adapters_equal_peft_each(tmp_path, ids):
    a = _peft_model(tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj"]), seed=1)
    b = _peft_model(tiny_llama, dict(r=2, lora_alpha=2, target_modules=["v_proj", "up_proj"]), seed=2)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    model = load_adapter(tiny_llama(), tmp_path / "a", "a")
    load_adapter(model, tmp_path / "b", "b", activate=False)
    assert torch.allclose(logits(model, ids), logits(a, ids), atol=1e-4)
    from tunelab.lora import set_active
    set_active(model, "b")
    assert torch.allclose(logits(model, ids), logits(b, ids), atol=1e-4)


def test_gradients_equal_peft(tmp_path, ids):
    pm = _peft_model(tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj", "embed_tokens"]))
    pm.save_pretrained(tmp_path)
    ours = load_adapter(tiny_llama(), tmp_path)
    for model in (pm, ours):
        model(input_ids=ids, labels=ids).loss.backward()
    theirs = {n.removeprefix("base_model.model.").replace(".default", ""): p.grad
              for n, p in pm.named_parameters() if p.requires_grad}
    mine = {n.replace(".default", ""): p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(mine) == set(theirs) and len(mine) == 10
    for name, grad in mine.items():
        assert grad is not None and torch.allclose(grad, theirs[name], atol=1e-5), name


def test_pissa_converted_to_plain_lora_works_on_the_original_base(tmp_path, ids):
    ours = inject(tiny_llama(), LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], init="pissa",
                                           use_rslora=True))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)  # "training" moved both factors
    save_adapter(ours, tmp_path, convert_pissa=True)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["r"] == 8 and written["init_lora_weights"] is True
    expected = logits(ours, ids)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)   # the ORIGINAL base weights
    assert torch.allclose(logits(theirs, ids), expected, atol=1e-4)
    assert torch.allclose(logits(load_adapter(tiny_llama(), tmp_path), ids), expected, atol=1e-4)
    with pytest.raises(LoraError, match="convert_pissa"):
        save_adapter(inject(tiny_llama(), LoraConfig(target_modules=["q_proj"])), tmp_path / "x", convert_pissa=True)


def test_half_precision_model_keeps_float32_adapters_like_peft(tmp_path, ids):
    pm = _peft_model(tiny_llama, dict(r=4, lora_alpha=8, target_modules=["q_proj", "embed_tokens"]))
    pm.save_pretrained(tmp_path)
    ours = load_adapter(tiny_llama().to(torch.bfloat16), tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama().to(torch.bfloat16), tmp_path)
    lora = [p for n, p in ours.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert all(p.dtype == torch.float32 for n, p in theirs.named_parameters() if "lora_" in n)
    got, expected = logits(ours, ids), logits(theirs, ids)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected.float(), atol=1e-2)


def test_deleting_or_failing_to_load_pissa_restores_the_original_base(tmp_path, ids):
    base = logits(tiny_llama(), ids)
    model = inject(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], init="pissa"))
    from tunelab.lora import delete
    delete(model, "default")
    assert torch.allclose(logits(model, ids), base, atol=1e-5)
    pm = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                           init_lora_weights="pissa"))
    pm.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(3, 32)
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    model = tiny_llama()
    with pytest.raises(LoraError, match=r"\(3, 32\)"):
        load_adapter(model, tmp_path)
    assert torch.allclose(logits(model, ids), base, atol=1e-5)
