"""Greedy engine output == transformers generate(do_sample=False), token for token, alone and batched."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams

PROMPTS = ["The quick brown fox", "Paris is the capital of France. Berlin", "def add(a, b):\n", "Hello"]
N = 20


def hf_greedy(ref, ids, n=N):
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2)
    tokens = out[0, len(ids):].tolist()
    return tokens[: tokens.index(1)] if 1 in tokens else tokens  # the engine leaves EOS out of token_ids


@pytest.fixture(scope="module")
def references(tiny_checkpoint):
    cache = {}

    def get(family):
        if family not in cache:
            path = tiny_checkpoint(family)
            cache[family] = (path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())
        return cache[family]

    return get


def test_batched_greedy_equals_transformers_alone(references, family):
    path, ref = references(family)
    llm = LLM(path, max_num_seqs=8, block_size=4)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    assert len({len(i) for i in ids}) > 2, "prompts must differ in length"
    outs = llm.generate(ids, SamplingParams(max_tokens=N))
    for prompt, out in zip(ids, outs):
        expected = hf_greedy(ref, prompt)
        assert out.token_ids == expected
        assert out.finish_reason == ("stop" if len(expected) < N else "length")
        assert out.prompt_tokens == len(prompt) and out.completion_tokens == len(expected)
        assert out.text == llm.tokenizer.decode(expected)
    assert llm.block_manager.num_used == 0, "finished sequences must free their blocks"
    # every decode token went through the dense per-sequence rows (the preemption test covers the gather path)
    assert llm.runner.decode_paths["dense"] > 0 and llm.runner.decode_paths["gathered"] == 0


def test_single_prompt_and_text_input(references):
    path, ref = references("llama")
    llm = LLM(path)
    (out,) = llm.generate(PROMPTS[1], SamplingParams(max_tokens=N))
    assert out.token_ids == hf_greedy(ref, llm.tokenizer.encode(PROMPTS[1]))


def test_tiny_kv_budget_preempts_and_still_matches(references, family):
    path, ref = references(family)
    block = 4
    probe = LLM(path, block_size=block, kv_cache_memory=10**6)
    per_token = probe.runner.bytes_per_token(probe.model)
    # 48 slots: one prompt plus its completion fits, four at once do not -> preemption by recompute.
    llm = LLM(path, block_size=block, kv_cache_memory=per_token * block * 12)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    outs = llm.generate(ids, SamplingParams(max_tokens=N))
    assert llm.scheduler.num_preemptions > 0
    # a cache this small leaves no room for the dense copy: decode tokens gather their blocks
    assert llm.runner.decode_paths["dense"] == 0 and llm.runner.decode_paths["gathered"] > 0
    for prompt, out in zip(ids, outs):
        assert out.token_ids == hf_greedy(ref, prompt)
    assert llm.block_manager.num_used == 0


def test_dense_decode_rows_stay_equal_to_the_paged_blocks_as_sequences_come_and_go(references):
    """Sequences join and leave the decode batch at different steps (rows move to stay packed, the copy grows);
    after every step each decoding sequence's dense row holds exactly the K/V in its paged blocks."""
    path, _ = references("llama")
    llm = LLM(path, max_num_seqs=8, block_size=4)
    runner, slots = llm.runner, llm.runner.slots
    lengths = [3, 9, 5, 14, 2, 7]  # tokens to generate: finishing at different steps
    pending = [llm.make_sequence(llm.tokenizer.encode(p), SamplingParams(max_tokens=n, ignore_eos=True))
               for p, n in zip(PROMPTS + PROMPTS[:2], lengths)]
    moved = 0
    while pending or llm.has_work():
        if pending and len(pending) % 2 == len(llm.scheduler.running) % 2:  # stagger the arrivals
            llm.add_sequence(pending.pop(0))
        before = dict(slots.row_of)
        llm.step()
        moved += sum(1 for seq_id, row in slots.row_of.items() if seq_id in before and before[seq_id] != row)
        for seq in llm.scheduler.running:
            row = slots.row_of.get(seq.seq_id)
            if row is None:
                continue
            n = slots.length[row]
            assert n == seq.num_cached
            index = torch.tensor([runner._slot(seq, p) for p in range(n)])
            assert torch.equal(slots.k[:, row, :, :n], runner.k_cache.index_select(1, index).transpose(1, 2))
            assert torch.equal(slots.v[:, row, :, :n], runner.v_cache.index_select(1, index).transpose(1, 2))
    assert moved > 0, "a row moved to keep the rows packed"
