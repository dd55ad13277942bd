import copy
import warnings

import pytest
import torch
from lora_models import logits, randomize_lora

from tunelab.lora import LoraConfig, LoraError, add, disabled, inject, merge, merge_and_unload, unmerge
from tunelab.lora.layers import LoraEmbedding, LoraLinear


def _adapted(llama):
    inject(llama, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"]))
    randomize_lora(llama)
    return llama


def test_merge_equals_unmerged_and_unmerge_restores_w0(llama, ids):
    w0 = {n: p.detach().clone() for n, p in llama.named_parameters()}
    _adapted(llama)
    expected = logits(llama, ids)
    merge(llama)
    assert torch.allclose(logits(llama, ids), expected, atol=1e-5)
    q = llama.model.layers[0].self_attn.q_proj
    assert q.merged_adapters == ["default"]
    assert not torch.allclose(q.base_layer.weight, w0["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(LoraError, match="merged"):
        with disabled(llama):
            pass
    unmerge(llama)
    for name, p in llama.named_parameters():
        plain = name.replace(".base_layer", "")
        if plain in w0:
            assert torch.allclose(p, w0[plain], atol=1e-6), name
    assert torch.allclose(logits(llama, ids), expected, atol=1e-5)


def test_merge_and_unload_gives_a_plain_model(llama, ids):
    _adapted(llama)
    expected = logits(llama, ids)
    merge_and_unload(llama)
    assert not any(isinstance(m, (LoraLinear, LoraEmbedding)) for m in llama.modules())
    assert set(llama.state_dict()) == set(type(llama)(llama.config).state_dict())
    assert torch.allclose(logits(llama, ids), expected, atol=1e-5)


def test_merge_equals_explicit_w0_plus_scaled_ba(llama):
    w0 = llama.model.layers[1].mlp.down_proj.weight.detach().clone()
    _adapted(llama)
    layer = llama.model.layers[1].mlp.down_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    merge(llama)
    assert torch.allclose(layer.base_layer.weight, w0 + (8 / 4) * b @ a, atol=1e-6)


def test_bf16_merge_accumulates_in_float32_and_warns(llama):
    llama.to(torch.bfloat16)
    _adapted(llama)
    layer = llama.model.layers[0].self_attn.q_proj
    w0 = layer.base_layer.weight.detach().clone()
    delta = layer.lora_B["default"].weight.float() @ layer.lora_A["default"].weight.float() * 2.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge(llama)
    assert any("rounded to torch.bfloat16" in str(w.message) for w in caught)
    # One rounding of the float32 sum, not a bf16 add of a bf16-rounded delta.
    assert torch.equal(layer.base_layer.weight, (w0.float() + delta).to(torch.bfloat16))


def test_merge_one_of_two_adapters(llama, ids):
    _adapted(llama)
    add(llama, LoraConfig(r=2, target_modules=["o_proj"]), "other")
    randomize_lora(llama, seed=9)
    expected = logits(llama, ids)
    merge(llama, "default")
    assert torch.allclose(logits(llama, ids), expected, atol=1e-5)
    before = copy.deepcopy(llama.model.layers[0].self_attn.o_proj.base_layer.weight)
    unmerge(llama, "default")
    assert torch.equal(llama.model.layers[0].self_attn.o_proj.base_layer.weight, before)


def test_gpt2_conv1d_merge_uses_the_transposed_layout(gpt2, ids):
    inject(gpt2, LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_fc", "wte"]))
    randomize_lora(gpt2)
    expected = logits(gpt2, ids)
    layer = gpt2.transformer.h[0].attn.c_attn
    w0 = layer.base_layer.weight.detach().clone()                      # Conv1D: [in, out]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with pytest.warns(UserWarning, match="tied"):  # wte is also lm_head: the head must keep W0
        merge_and_unload(gpt2)
    assert gpt2.lm_head.weight is not gpt2.transformer.wte.weight
    assert type(gpt2.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert torch.allclose(gpt2.transformer.h[0].attn.c_attn.weight, w0 + ((8 / 4) * b @ a).T, atol=1e-6)
    assert torch.allclose(logits(gpt2, ids), expected, atol=1e-5)
