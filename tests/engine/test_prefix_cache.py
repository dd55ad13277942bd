"""Prefix caching: shared full blocks change which tokens are computed, never the output.

Greedy outputs with the cache equal outputs without it and transformers' own greedy decoding: for prompts sharing a
prefix, one after another and in one batch, under LoRA adapters (the adapter is part of a block's key), and after
the cached blocks were evicted. Few-shot prompts sharing their examples compute <= 10% of their prompt tokens after
the first request, counted independently of the engine's own bookkeeping (tokens through the embedding layer).
"""

import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.sequence import Sequence

from test_engine_adapters import make_peft_adapter, peft_greedy  # noqa: I001

SHARED = ("You answer with the capital. Q: France? A: Paris. Q: Germany? A: Berlin. Q: Italy? A: Rome. "
          "Q: Spain? A: Madrid. Q: Japan? A: Tokyo. Q: Egypt? A: Cairo. Q: ")
QUESTIONS = ["Peru? A:", "Chile? A:", "Kenya? A:", "Nepal? A:", "Cuba? A:", "Fiji? A:"]


def hf_greedy(ref, ids, n):
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2)
    tokens = out[0, len(ids):].tolist()
    return tokens[: tokens.index(1)] if 1 in tokens else tokens


def count_computed_tokens(llm):
    """Tokens fed through the embedding layer (padding included, so feed one prompt at a time)."""
    seen = [0]
    llm.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.__setitem__(0, seen[0] + args[0].numel()))
    return seen


def test_outputs_equal_with_and_without_cache_and_transformers(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cached = LLM(path, block_size=4, max_num_seqs=8)
    plain = LLM(path, block_size=4, max_num_seqs=8, enable_prefix_caching=False)
    prompts = [cached.tokenizer.encode(SHARED + q) for q in QUESTIONS]
    params = SamplingParams(max_tokens=12)
    one_by_one = [cached.generate([p], params)[0].token_ids for p in prompts]
    batched = [o.token_ids for o in cached.generate(prompts, params)]  # all hit the blocks cached above
    without = [o.token_ids for o in plain.generate(prompts, params)]
    expected = [hf_greedy(ref, p, 12) for p in prompts]
    assert one_by_one == batched == without == expected
    assert cached.block_manager.hit_tokens > 0 and plain.block_manager.hit_tokens == 0


def test_requests_admitted_together_share_blocks_computed_in_the_same_step(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, block_size=4, max_num_seqs=8)
    prompts = [llm.tokenizer.encode(SHARED + q) for q in QUESTIONS]
    outs = llm.generate(prompts, SamplingParams(max_tokens=8))
    assert llm.block_manager.hit_tokens > 0
    assert [o.token_ids for o in outs] == [hf_greedy(ref, p, 8) for p in prompts]


def test_few_shot_prompts_compute_at_most_ten_percent_after_the_first(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("llama"), block_size=4, max_num_seqs=4)
    examples = " ".join(f"Q: country number {i}? A: capital number {i}." for i in range(6))
    prompts = [llm.tokenizer.encode(examples + " Q: " + q) for q in QUESTIONS]
    seen = count_computed_tokens(llm)
    llm.generate([prompts[0]], SamplingParams(max_tokens=1))
    seen[0] = 0
    for p in prompts[1:]:
        llm.generate([p], SamplingParams(max_tokens=1))  # one token: the prefill is the only model call
    total = sum(len(p) for p in prompts[1:])
    assert seen[0] <= 0.10 * total, (seen[0], total)


def test_adapters_key_their_own_blocks(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama")
    ref = make_peft_adapter(base, tmp_path / "alpha", 1, ["q_proj", "v_proj"])
    llm = LLM(base, block_size=4, max_num_seqs=4, adapters={"alpha": str(tmp_path / "alpha")})
    ids = llm.tokenizer.encode(SHARED + QUESTIONS[0])
    params = SamplingParams(max_tokens=10)
    base_out = llm.generate([ids], params)[0].token_ids  # caches the prefix's blocks under no adapter
    adapted = llm.generate([ids], params, adapter="alpha")[0].token_ids
    again = llm.generate([ids], params, adapter="alpha")[0].token_ids  # now hits alpha's own blocks
    assert adapted == again == peft_greedy(ref, ids, 10)
    with ref.disable_adapter():
        assert base_out == peft_greedy(ref, ids, 10)
    assert adapted != base_out, "the adapter must change the output, or this test proves nothing"


def test_outputs_equal_after_eviction(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    probe = LLM(path, block_size=4, max_num_seqs=2)
    per_token = probe.runner.bytes_per_token(probe.model)
    llm = LLM(path, block_size=4, max_num_seqs=2, kv_cache_memory=per_token * 4 * 64)  # 64 blocks
    prompts = [llm.tokenizer.encode(SHARED + q) for q in QUESTIONS]
    params = SamplingParams(max_tokens=8)
    first = llm.generate([prompts[0]], params)[0].token_ids
    # Fill the cache with unrelated prompts until the shared prefix's blocks have been handed out again.
    for i in range(6):
        llm.generate([llm.tokenizer.encode(f"unrelated text number {i} " * 6)], params)
    assert not any(llm.block_manager._cached_prefix(Sequence(prompts[0], params, None)))
    assert llm.generate([prompts[0]], params)[0].token_ids == first == hf_greedy(ref, prompts[0], 8)


def test_blocks_keyed_for_a_failed_step_are_not_reused(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, block_size=4, max_num_seqs=2)
    ids = llm.tokenizer.encode(SHARED + QUESTIONS[0])
    real_run = llm.runner.run
    monkeypatch.setattr(llm.runner, "run", lambda seqs: (_ for _ in ()).throw(RuntimeError("kernel failure")))
    assert llm.generate([ids], SamplingParams(max_tokens=8))[0].finish_reason == "error"
    monkeypatch.setattr(llm.runner, "run", real_run)
    assert llm.generate([ids], SamplingParams(max_tokens=8))[0].token_ids == hf_greedy(ref, ids, 8)
