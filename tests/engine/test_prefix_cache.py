"""Prefix caching: shared blocks, and token-level matches copied from a cached block, change which tokens are
computed, never the output.

Greedy outputs with the cache equal outputs without it and transformers' own greedy decoding: for prompts sharing a
prefix, one after another and in one batch, under LoRA adapters (the adapter is part of a block's key), and after
the cached blocks were evicted. A prompt sharing 20 tokens with another computes all but those 20, in a later step
and in the same step as the one it copies from (whose K/V are written in that very step: its logits equal
transformers'). Few-shot prompts sharing their examples compute <= 10% of their prompt tokens after the first
request, counted independently of the engine's own bookkeeping (tokens through the embedding layer).
"""

import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.block_manager import BlockManager
from tunelab.engine.sequence import Sequence

from test_engine_adapters import make_peft_adapter, peft_greedy  # noqa: I001
from tiny_models import VOCAB

SHARED = ("You answer with the capital. Q: France? A: Paris. Q: Germany? A: Berlin. Q: Italy? A: Rome. "
          "Q: Spain? A: Madrid. Q: Japan? A: Tokyo. Q: Egypt? A: Cairo. Q: ")
QUESTIONS = ["Peru? A:", "Chile? A:", "Kenya? A:", "Nepal? A:", "Cuba? A:", "Fiji? A:"]


def hf_greedy(ref, ids, n):
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2)
    tokens = out[0, len(ids):].tolist()
    return tokens[: tokens.index(1)] if 1 in tokens else tokens


def sharing(n_shared, tails, seed=0):
    """Prompts of random token ids that share exactly their first `n_shared` tokens, then `tails` tokens each."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, VOCAB, (n_shared,), generator=gen).tolist()
    prompts = []
    for i, n in enumerate(tails):
        tail = torch.randint(3, VOCAB, (n,), generator=gen).tolist()
        tail[0] = 3 + i  # differs from every other prompt's next token
        prompts.append(shared + tail)
    return prompts


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
    llm = LLM(tiny_checkpoint("llama"), max_num_seqs=4)  # 16-token blocks: the examples end inside one
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
    hits, partial = llm.block_manager._cached_prefix(Sequence(prompts[0], params, None))
    assert hits == [] and (partial is None or partial[1] <= 1)  # at most a first token in common
    assert llm.generate([prompts[0]], params)[0].token_ids == first == hf_greedy(ref, prompts[0], 8)
    # and a token-level match on blocks computed after the eviction
    assert llm.generate([prompts[1]], params)[0].token_ids == hf_greedy(ref, prompts[1], 8)


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


def test_a_token_level_match_in_the_same_step_copies_k_v_written_in_that_step(tiny_checkpoint, family):
    """B shares 20 tokens with A and is admitted in A's step: 16 come from A's first block, 4 are copied from A's
    second block, whose K/V that same step computes. C shares 22 with B: 6 are copied from B's second block, whose
    first 4 are that step's copy from A. Copied too early, or out of order, the logits would see zeros."""
    path = tiny_checkpoint(family)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    a, b = sharing(20, [17, 13])
    c = b[:22] + sharing(0, [12], seed=1)[0]  # B's first 22 tokens, then its own
    llm = LLM(path, block_size=16, max_num_seqs=4)
    for ids in (a, b, c):
        llm.add_sequence(llm.make_sequence(ids, SamplingParams(max_tokens=1)))
    step = llm.scheduler.schedule()
    assert step.num_tokens == [len(a), len(b) - 20, len(c) - 22]  # one step; each computes only what it lacks
    first, second, third = step.seqs
    assert second.prefix_copy.src == first.block_table[1] and third.prefix_copy.src == second.block_table[1]
    logits = llm.runner.run(step.seqs)
    with torch.no_grad():
        expected = torch.stack([ref(torch.tensor([ids])).logits[0, -1] for ids in (a, b, c)])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_token_level_matches_equal_no_cache_in_later_steps_and_batches(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    cached, plain = LLM(path, max_num_seqs=8), LLM(path, max_num_seqs=8, enable_prefix_caching=False)
    prompts = sharing(20, [17, 9, 12, 30])
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    seen = count_computed_tokens(cached)
    first = cached.generate([prompts[0]], params)[0].token_ids  # caches 32 of its tokens in two full blocks
    seen[0] = 0
    second = cached.generate([prompts[1]], SamplingParams(max_tokens=1, ignore_eos=True))[0].token_ids
    assert seen[0] == len(prompts[1]) - 20, "a later request computes only what it does not share"
    batched = [o.token_ids for o in cached.generate(prompts, params)]  # from the cache, and from one another
    without = [o.token_ids for o in plain.generate(prompts, params)]
    assert [first] + batched[1:] == batched == without and second == without[1][:1]


def test_a_different_adapter_does_not_match_at_token_level(tiny_checkpoint, tmp_path):
    base = tiny_checkpoint("llama")
    ref = make_peft_adapter(base, tmp_path / "alpha", 1, ["q_proj", "v_proj"])
    llm = LLM(base, max_num_seqs=4, adapters={"alpha": str(tmp_path / "alpha")})
    a, b, c = sharing(20, [17, 9, 12])
    params = SamplingParams(max_tokens=6)
    llm.generate([a], params)  # keys A's blocks under no adapter
    adapted = llm.generate([b], params, adapter="alpha")[0].token_ids
    assert llm.block_manager.hit_tokens == 0, "blocks computed without the adapter must not match"
    again = llm.generate([c], params, adapter="alpha")[0].token_ids  # 16 + 4 tokens from B's blocks under alpha
    assert llm.block_manager.hit_tokens == 20
    assert adapted == peft_greedy(ref, b, 6) and again == peft_greedy(ref, c, 6)


def test_the_copy_source_is_held_until_the_step_ran_and_never_handed_out():
    bm = BlockManager(num_blocks=6, block_size=4)
    params = SamplingParams()
    a, b, c = sharing(6, [7, 10, 15])  # 13, 16 and 21 tokens
    first = Sequence(a, params, None)
    assert bm.allocate(first, len(a) + 1)
    bm.commit(first, len(a))  # keys its three full blocks
    bm.release(first)  # free, LRU first: the two never used, then its blocks last to first
    second = Sequence(b, params, None)
    assert bm.allocate(second, len(b) + 1)
    copy = second.prefix_copy
    assert second.num_cached == 6 and copy.length == 2 and copy.dst == second.block_table[1]
    src = copy.src
    assert bm.refs[src] == 1 and src not in bm.free and src not in second.block_table
    assert len(bm.free) == 0  # the only block left is the pinned source: a one-block request cannot take it
    assert not bm.allocate(Sequence([5, 5], params, None), 3)
    bm.copied(second)
    assert bm.refs[src] == 0 and src in bm.free and src in bm.key_of  # still cached, and now evictable
    bm.release(second)
    # With no room to hold a source as well, the match falls back to whole blocks rather than failing to admit.
    third = Sequence(c, params, None)
    assert bm.allocate(third, len(c) + 1)  # 6 blocks: all of them
    assert third.prefix_copy is None and third.num_cached == 4


def test_a_one_token_first_chunk_after_a_same_step_hit_is_not_read_before_it_is_written(tiny_checkpoint):
    """The second prompt, admitted with the first, computes only its last token: the rest is in the first's blocks,
    written in that same step, so it must not go the decode path (which reads its cached K/V before the step)."""
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = sharing(32, [1])[0]  # 33 tokens
    for first, second in ((ids[:17], ids[:17]), (ids, ids[:20])):  # 16 from a whole block; 16 + 3 copied
        llm = LLM(path, max_num_seqs=4)
        outs = llm.generate([first, second], SamplingParams(max_tokens=6))
        assert llm.block_manager.hit_tokens == len(second) - 1
        assert [o.token_ids for o in outs] == [hf_greedy(ref, first, 6), hf_greedy(ref, second, 6)]


def test_token_level_matches_survive_preemption_and_release_every_block(tiny_checkpoint):
    path = tiny_checkpoint("llama")
    probe = LLM(path, block_size=8)
    per_token = probe.runner.bytes_per_token(probe.model)
    llm = LLM(path, block_size=8, kv_cache_memory=per_token * 8 * 12)  # 12 blocks: one request fits, four do not
    prompts = sharing(20, [10, 12, 9, 14])
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    outs = [o.token_ids for o in llm.generate(prompts, params)]
    assert llm.scheduler.num_preemptions > 0 and llm.block_manager.hit_tokens > 0
    plain = LLM(path, block_size=8, enable_prefix_caching=False)  # room for all: no preemption
    assert outs == [o.token_ids for o in plain.generate(prompts, params)]
    assert llm.block_manager.num_used == 0  # every block and every pinned copy source was released


def test_a_failed_step_with_a_token_level_match_releases_its_pin_and_caches_nothing(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, max_num_seqs=4)
    prompts = sharing(20, [17, 9])  # admitted together: the second copies 4 tokens from the first's block
    real_run = llm.runner.run
    monkeypatch.setattr(llm.runner, "run", lambda seqs: (_ for _ in ()).throw(RuntimeError("kernel failure")))
    assert [o.finish_reason for o in llm.generate(prompts, SamplingParams(max_tokens=6))] == ["error", "error"]
    assert llm.block_manager.num_used == 0 and not llm.block_manager.key_of  # nothing unwritten stays cached
    monkeypatch.setattr(llm.runner, "run", real_run)
    outs = llm.generate(prompts, SamplingParams(max_tokens=6))
    assert [o.token_ids for o in outs] == [hf_greedy(ref, p, 6) for p in prompts]
