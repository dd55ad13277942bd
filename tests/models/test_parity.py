"""Logit parity with transformers for every family: the acceptance test of the
one-definition model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.models import load_pretrained, save_pretrained


def _inputs(batch=2, seq=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (batch, seq), generator=g)


def test_logits_match_transformers(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    ours, _ = load_pretrained(path, dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = _inputs()
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape == (2, 16, 384)
    assert (got - expected).abs().max().item() <= 1e-4


def test_padded_batch_matches_transformers(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    ours, _ = load_pretrained(path, dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = _inputs(batch=3, seq=12, seed=2)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding of different lengths
    mask[2, :9] = 0
    ids = ids.masked_fill(mask == 0, 2)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask)  # positions derived from the mask by default
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4
    # A padded row equals the same row run alone, unpadded.
    with torch.no_grad():
        alone = ours(ids[2:3, 9:])
    assert (got[2, 9:] - alone[0]).abs().max().item() <= 1e-4


def test_kv_cache_decoding_matches_full_forward(tiny_checkpoint, family):
    from tunelab.models import KVCache

    model, _ = load_pretrained(tiny_checkpoint(family))
    ids = _inputs(batch=1, seq=14, seed=3)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.config, 1, 32)
        steps = [model(ids[:, :9], cache=cache)]  # prefill, then chunks of 1 and 4 tokens
        steps.append(model(ids[:, 9:10], cache=cache))
        steps.append(model(ids[:, 10:14], cache=cache))
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4


def test_saved_checkpoint_loads_in_transformers_with_identical_logits(tiny_checkpoint, family, tmp_path):
    model, tok = load_pretrained(tiny_checkpoint(family))
    save_pretrained(model, tok, tmp_path / "out")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = _inputs()
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, AutoModelForCausalLM.from_pretrained(
            tiny_checkpoint(family), dtype=torch.float32).eval()(ids).logits)
        assert (ref(ids).logits - model(ids)).abs().max().item() <= 1e-4
    # And back into tunelab, bit for bit.
    again, _ = load_pretrained(tmp_path / "out")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_sharded_checkpoint(tmp_path):
    from tiny_models import make_hf_model, make_tokenizer

    ref = make_hf_model("llama", seed=5)
    ref.save_pretrained(tmp_path, max_shard_size="100KB")
    make_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours, _ = load_pretrained(tmp_path)
    ids = _inputs()
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    # tunelab writes shards too, with an index transformers reads.
    save_pretrained(ours, None, tmp_path / "resharded", max_shard_bytes=100_000)
    assert len(list((tmp_path / "resharded").glob("model-*.safetensors"))) > 1
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resharded", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_and_runs(tiny_checkpoint, dtype):
    model, _ = load_pretrained(tiny_checkpoint("llama"), dtype=dtype)
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    ref, _ = load_pretrained(tiny_checkpoint("llama"))
    ids = _inputs()
    with torch.no_grad():
        diff = (model(ids).float() - ref(ids)).abs().max().item()
    assert diff < 0.5  # rounding only; a wrong layout would be off by far more


def test_checkpoint_names_round_trip(tiny_checkpoint, family):
    model, _ = load_pretrained(tiny_checkpoint(family))
    ref = AutoModelForCausalLM.from_pretrained(tiny_checkpoint(family))
    theirs = {n for n, _ in ref.named_modules()}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            hf = model.checkpoint_name(name)
            assert hf in theirs, (name, hf)
            assert model.module_name(hf) == name


def test_hooks_still_fire_when_inference_skips_module_call_bookkeeping(tiny_checkpoint):
    """Without gradients the model calls its submodules' `forward` directly (nn.Module.__call__ costs ~5 µs a call);
    a hook on a block or a projection, or a global hook, must still see every call, with or without gradients."""
    ours, _ = load_pretrained(tiny_checkpoint("llama"), dtype="float32")
    ids = _inputs(batch=1, seq=5)
    seen = []
    block = ours.layers[1].register_forward_hook(lambda m, args, out: seen.append("block"))
    proj = ours.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, args: seen.append("down_proj"))
    with torch.inference_mode():
        hooked = ours(ids)
    assert seen == ["down_proj", "block"]
    block.remove(), proj.remove()
    with torch.inference_mode():
        assert torch.equal(ours(ids), hooked)
    assert seen == ["down_proj", "block"], "removed hooks stay removed"
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, args, out: seen.append(type(m).__name__))
    try:
        with torch.no_grad():
            ours(ids)
    finally:
        handle.remove()
    assert seen.count("Block") == len(ours.layers) and "RMSNorm" in seen
