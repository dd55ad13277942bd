"""Greedy generation equals transformers' generate(do_sample=False) token for token."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.models import generate, load_pretrained
from tunelab.models.generation import sample
from tunelab.models.transformer import KVCache, Transformer

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):\n"]


def _hf_greedy(ref, ids, n, mask=None):
    out = ref.generate(
        torch.tensor(ids), attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2
    )
    return out[:, len(ids[0]):].tolist()


def _until_eos(tokens):
    return tokens[: tokens.index(1) + 1] if 1 in tokens else tokens


def test_greedy_equals_transformers(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    model, tok = load_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        expected = _until_eos(_hf_greedy(ref, [ids], 24)[0])
        got = generate(model, tok, ids, max_new_tokens=24)
        assert got.token_ids == [t for t in expected if t != 1]
        assert got.finish_reason == ("stop" if expected[-1] == 1 else "length")
        assert got.prompt_tokens == len(ids) and got.completion_tokens == len(got.token_ids)
        assert got.text == tok.decode(got.token_ids)


def test_batched_left_padded_greedy_equals_transformers(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    model, tok = load_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [tok.encode(p) for p in PROMPTS]
    ours = generate_batch_ids(model, prompts, 16, eos_token_ids=[1], pad_token_id=2)
    for p, got in zip(prompts, ours):
        assert got == _until_eos(_hf_greedy(ref, [p], 16)[0])


@torch.inference_mode()
def generate_batch_ids(  # the model's left-padded batch path, decoded greedily by hand
    model: Transformer,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_ids: list[int] | None = None,
    pad_token_id: int = 0,
) -> list[list[int]]:
    """Greedy generation for a left-padded batch; each row stops at its own EOS."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, device=device)
    mask = torch.zeros((len(prompts), width + max_new_tokens), dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) : width] = 1
    eos = set(eos_token_ids or [])
    cache = KVCache(model.config, len(prompts), width + max_new_tokens, dtype=dtype, device=device)
    logits = model(ids, attention_mask=mask[:, :width], cache=cache)[:, -1]
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        tokens = logits.argmax(-1)
        for row, t in enumerate(tokens.tolist()):
            if not done[row]:
                outs[row].append(t)
                done[row] = t in eos
        if all(done):
            break
        mask[:, width + step] = 1
        logits = model(tokens[:, None], attention_mask=mask[:, : width + step + 1], cache=cache)[:, -1]
    return outs



def test_stop_strings_cut_the_text(tiny_checkpoint):
    model, tok = load_pretrained(tiny_checkpoint("llama"))
    full = generate(model, tok, PROMPTS[0], max_new_tokens=20)
    assert len(full.text) > 4, "the tiny model should produce some text"
    stop = full.text[2:4]
    cut = generate(model, tok, PROMPTS[0], max_new_tokens=20, stop=[stop])
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == full.text[: full.text.find(stop)]


def test_sampling_is_reproducible_with_a_seed(tiny_checkpoint):
    model, tok = load_pretrained(tiny_checkpoint("qwen2"))
    a = generate(model, tok, PROMPTS[1], max_new_tokens=16, temperature=1.0, seed=7)
    b = generate(model, tok, PROMPTS[1], max_new_tokens=16, temperature=1.0, seed=7)
    assert a.token_ids == b.token_ids


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample(logits, 1.0, top_k=2, generator=g)) for _ in range(200)} == {0, 1}
    # p(0)=0.72, p(1)=0.26: top_p=0.5 keeps only the first token, top_p=0.9 the first two.
    assert {int(sample(logits, 1.0, top_p=0.5, generator=g)) for _ in range(100)} == {0}
    assert {int(sample(logits, 1.0, top_p=0.9, generator=g)) for _ in range(300)} == {0, 1}
    assert int(sample(logits, 0.0)) == 0


def test_prompt_longer_than_context_is_rejected(tiny_checkpoint):
    from tunelab.models import ModelError

    model, tok = load_pretrained(tiny_checkpoint("gpt2"))
    with pytest.raises(ModelError, match="context is 256"):
        generate(model, tok, [5] * 300)
