import copy

import peft
import pytest
import torch
from lora_models import logits, randomize_lora, tiny_gpt2, tiny_llama
from torch import nn

from tunelab.lora import (LoraConfig, LoraError, LoraLinear, add, delete, disabled, inject, set_active,
                          trainable_parameters)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def _wrapped(model):
    return sorted(p.removeprefix("base_model.model.") for p, m in model.named_modules()
                  if hasattr(m, "base_layer") and (hasattr(m, "lora_A") or hasattr(m, "lora_embedding_A")))


@pytest.mark.parametrize("make,targets,extra", [
    (tiny_llama, ["q_proj", "v_proj"], {}),
    (tiny_llama, "all-linear", {}),
    (tiny_llama, r".*layers\.1\.mlp\.(up|down)_proj", {}),
    (tiny_llama, ["self_attn.q_proj", "embed_tokens"], {}),
    (tiny_llama, ["q_proj", "o_proj", "down_proj"], {"exclude_modules": ["o_proj"], "layers_to_transform": [1]}),
    (tiny_llama, "all-linear", {"exclude_modules": r".*\.0\..*"}),
    (tiny_gpt2, "all-linear", {}),
    (tiny_gpt2, ["c_attn"], {}),
])
def test_same_layers_and_parameter_counts_as_peft(make, targets, extra):
    ours, theirs = make(), make()
    inject(ours, LoraConfig(r=4, alpha=8, target_modules=targets, **extra))
    pm = peft.get_peft_model(theirs, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, **extra))
    assert _wrapped(ours) == _wrapped(pm)
    counts = trainable_parameters(ours)
    trainable, total = pm.get_nb_trainable_parameters()
    assert (counts.trainable, counts.total) == (trainable, total)
    assert str(counts) == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def test_fresh_adapter_starts_at_base_and_freezes_the_rest(llama, ids):
    base = logits(copy.deepcopy(llama), ids)
    inject(llama, LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
    assert torch.allclose(logits(llama, ids), base, atol=1e-6)
    trainable = {n for n, p in llama.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)


def test_target_matching_nothing_lists_the_linear_layers(llama):
    with pytest.raises(LoraError) as err:
        inject(llama, LoraConfig(target_modules=["qkv"]))
    assert "model.layers.0.self_attn.q_proj" in str(err.value) and "lm_head" in str(err.value)


def test_named_adapters_switch_disable_and_delete(llama, ids):
    base = logits(copy.deepcopy(llama), ids)
    inject(llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), "a")
    add(llama, LoraConfig(r=2, target_modules=["down_proj"]), "b")
    randomize_lora(llama)
    a_out = logits(llama, ids)
    set_active(llama, "b")
    b_out = logits(llama, ids)
    assert not torch.allclose(a_out, base, atol=1e-3) and not torch.allclose(b_out, a_out, atol=1e-3)
    with disabled(llama):
        assert torch.allclose(logits(llama, ids), base, atol=1e-6)
    assert torch.allclose(logits(llama, ids), b_out)
    # Only the active adapter trains.
    assert all("lora_A.b" in n or "lora_B.b" in n for n, p in llama.named_parameters() if p.requires_grad)
    set_active(llama, "a")
    delete(llama, "b")
    assert isinstance(llama.model.layers[0].mlp.down_proj, nn.Linear)
    assert torch.allclose(logits(llama, ids), a_out, atol=1e-6)
    with pytest.raises(LoraError, match="unknown adapter"):
        set_active(llama, "b")


def test_plain_module_stack_and_modules_to_save():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(3, 8)
    base = model(x)
    inject(model, LoraConfig(r=2, target_modules=["0", "2"], modules_to_save=["4"], bias="lora_only"))
    assert isinstance(model[0], LoraLinear) and isinstance(model[2], LoraLinear)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert "0.base_layer.bias" in trainable and "4.modules_to_save.default.weight" in trainable
    assert "0.base_layer.weight" not in trainable and "4.original_module.weight" not in trainable
    with torch.no_grad():
        model[4].modules_to_save["default"].weight.add_(1.0)
    assert not torch.allclose(model(x), base)
    with disabled(model):
        assert torch.allclose(model(x), base)


def test_bad_config_fields_are_named():
    with pytest.raises(LoraError, match="LoraConfig.r"):
        LoraConfig(r=0)
    with pytest.raises(LoraError, match="bias"):
        LoraConfig(bias="some")
    with pytest.raises(LoraError, match="init"):
        LoraConfig(init="xavier")
    assert LoraConfig.from_dict(LoraConfig(r=3).to_dict()) == LoraConfig(r=3)


def test_rslora_and_gaussian_scaling():
    assert LoraConfig(r=16, alpha=8, use_rslora=True).scaling == pytest.approx(2.0)
    assert LoraConfig(r=16, alpha=8).scaling == pytest.approx(0.5)


def test_failed_add_leaves_the_model_unchanged(llama, ids):
    before = logits(llama, ids)
    with pytest.raises(LoraError):
        inject(llama, LoraConfig(target_modules=["q_proj"], modules_to_save=["no_such_head"]))
    assert not hasattr(llama, "_tunelab_lora") and all(p.requires_grad for p in llama.parameters())
    assert not any(isinstance(m, LoraLinear) for m in llama.modules())
    assert torch.equal(logits(llama, ids), before)
