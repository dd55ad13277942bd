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
