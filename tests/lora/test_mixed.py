"""Each row (or token) of a mixed batch must equal running its adapter alone."""

import pytest
import torch
from lora_models import logits, randomize_lora
from torch import nn

from tunelab.lora import (LoraConfig, LoraError, add, disabled, inject, merge, per_row_adapters, per_token_adapters,
                          set_active, unmerge)


def _three_adapters(model, targets_a, targets_b, targets_c):
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets_a), "a")
    add(model, LoraConfig(r=2, alpha=8, target_modules=targets_b, use_rslora=True), "b")
    add(model, LoraConfig(r=8, alpha=4, target_modules=targets_c), "c")
    randomize_lora(model)
    return model


def _alone(model, ids, rows):
    out = []
    for i, name in enumerate(rows):
        if name is None:
            with disabled(model):
                out.append(logits(model, ids[i:i + 1]))
        else:
            set_active(model, name)
            out.append(logits(model, ids[i:i + 1]))
    return torch.cat(out)


@pytest.mark.parametrize("builder", ["llama", "gpt2"])
def test_per_row_equals_each_adapter_alone(request, builder):
    model = request.getfixturevalue(builder)
    if builder == "llama":
        _three_adapters(model, ["q_proj", "v_proj", "embed_tokens"], "all-linear", ["down_proj"])
    else:
        _three_adapters(model, ["c_attn", "wte"], ["c_proj"], ["c_fc", "c_attn"])
    ids = torch.randint(0, 64, (6, 7), generator=torch.Generator().manual_seed(0))
    rows = ["a", "b", None, "a", "c", "b"]
    with per_row_adapters(model, rows):
        mixed = logits(model, ids)
    expected = _alone(model, ids, rows)
    assert torch.allclose(mixed, expected, atol=1e-5), (mixed - expected).abs().max()
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_per_token_on_packed_rows_matches_per_row(llama):
    _three_adapters(llama, ["q_proj", "embed_tokens"], ["v_proj", "up_proj"], ["o_proj"])
    ids = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    with per_row_adapters(llama, ["c", None, "b"]):
        expected = logits(llama, ids)
    index = torch.tensor([2, -1, 1]).repeat_interleave(5)  # positions in ["a", "b", "c"], -1 = base
    with per_token_adapters(llama, ["a", "b", "c"], index):
        got = logits(llama, ids)
    assert torch.allclose(got, expected, atol=1e-5)


def test_per_token_mixes_inside_one_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 5))
    inject(model, LoraConfig(r=3, target_modules=["0", "1"]), "a")
    add(model, LoraConfig(r=2, target_modules=["1", "3"]), "b")
    randomize_lora(model)
    ids = torch.tensor([[1, 4, 4, 9, 0, 19]])
    index = torch.tensor([0, 1, -1, 1, 0, 0])
    with per_token_adapters(model, ["a", "b"], index):
        got = model(ids)
    for t, which in enumerate(index.tolist()):
        if which < 0:
            with disabled(model):
                ref = model(ids[:, t:t + 1])
        else:
            set_active(model, ["a", "b"][which])
            ref = model(ids[:, t:t + 1])
        assert torch.allclose(got[:, t:t + 1], ref, atol=1e-5)


def test_mixed_batch_errors_are_actionable(llama, ids):
    _three_adapters(llama, ["q_proj"], ["v_proj"], ["o_proj"])
    with pytest.raises(LoraError, match="4 rows"):
        with per_row_adapters(llama, ["a", "b"]):
            logits(llama, ids)
    with pytest.raises(LoraError, match="unknown adapter"):
        with per_row_adapters(llama, ["a", "zzz", "a", "a"]):
            pass
    merge(llama, "a")
    with pytest.raises(LoraError, match="unmerge"):
        with per_row_adapters(llama, ["a", "b", "a", "a"]):
            pass
    unmerge(llama)


def test_per_row_decode_shape_takes_the_token_path_and_still_matches(llama):
    # One token per row (decode) and more rows than adapter slots: the cheaper token path must give the same answer.
    _three_adapters(llama, ["q_proj", "embed_tokens"], "all-linear", ["down_proj"])
    ids = torch.randint(0, 64, (7, 1), generator=torch.Generator().manual_seed(3))
    rows = ["a", "b", None, "c", "c", "a", "b"]
    with per_row_adapters(llama, rows):
        mixed = logits(llama, ids)
    assert torch.allclose(mixed, _alone(llama, ids, rows), atol=1e-5)


def test_cached_stacks_follow_adapter_updates(llama):
    _three_adapters(llama, ["q_proj", "embed_tokens"], ["v_proj"], ["o_proj"])
    ids = torch.randint(0, 64, (3, 6), generator=torch.Generator().manual_seed(5))
    rows = ["a", "b", "c"]
    with per_row_adapters(llama, rows):
        first = logits(llama, ids)
    with torch.no_grad():  # an optimizer step, in place
        for name, p in llama.named_parameters():
            if "lora_B.b" in name or "lora_embedding_B.a" in name:
                p.mul_(-2.0)
    with per_row_adapters(llama, rows):
        second = logits(llama, ids)
    assert not torch.allclose(first, second, atol=1e-4)
    assert torch.allclose(second, _alone(llama, ids, rows), atol=1e-5)


@pytest.mark.parametrize("rows", [["b", "b", "b"], [None, None, None]])
def test_uniform_batch_takes_the_plain_path_and_restores_state(llama, rows):
    _three_adapters(llama, ["q_proj", "embed_tokens"], ["v_proj", "up_proj"], ["o_proj"])
    set_active(llama, ["a", "c"])  # what the model had before must come back afterwards
    ids = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(2))
    before = logits(llama, ids)
    with per_row_adapters(llama, rows):
        got = logits(llama, ids)
    assert torch.allclose(got, _alone(llama, ids, rows), atol=1e-6)
    set_active(llama, ["a", "c"])
    assert torch.equal(logits(llama, ids), before)


def test_uniform_batch_restores_the_active_adapters_without_set_active(llama):
    _three_adapters(llama, ["q_proj"], ["v_proj"], ["o_proj"])
    set_active(llama, "a")
    ids = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(3))
    before = logits(llama, ids)
    with per_row_adapters(llama, ["b", "b"]):
        logits(llama, ids)
    assert torch.equal(logits(llama, ids), before)
    with pytest.raises(LoraError, match="unknown adapter"):
        with per_row_adapters(llama, ["nope", "nope"]):
            pass


def test_routing_is_a_forward_argument_and_leaves_layers_unchanged(llama):
    """A layer mixes from the `routing` it is given; per_row_adapters writes nothing into the layers."""
    from tunelab.lora import Routing, lora_layers

    _three_adapters(llama, ["q_proj", "embed_tokens"], ["q_proj"], ["v_proj"])
    set_active(llama, "b")
    path, layer = next((p, m) for p, m in lora_layers(llama) if p.endswith("q_proj"))
    x = torch.randn(3, 9, layer.in_features, generator=torch.Generator().manual_seed(2))
    rows = ["a", None, "b"]
    direct = layer(x, routing=Routing.per_row(rows))
    expected = []
    for i, name in enumerate(rows):
        if name is None:
            with disabled(llama):
                expected.append(layer(x[i:i + 1]))
        else:
            set_active(llama, name)
            expected.append(layer(x[i:i + 1]))
    assert torch.allclose(direct, torch.cat(expected), atol=1e-5)
    set_active(llama, "b")
    before = {p: (dict(vars(m)), list(m._forward_pre_hooks)) for p, m in lora_layers(llama)}
    with per_row_adapters(llama, rows):
        assert torch.equal(layer(x), direct)
        inside = {p: dict(vars(m)) for p, m in lora_layers(llama)}
    assert inside == {p: d for p, (d, _) in before.items()}  # no attribute set from outside
    assert {p: (dict(vars(m)), list(m._forward_pre_hooks)) for p, m in lora_layers(llama)} == before
    assert layer.active_adapters == ["b"] and not layer.disabled
