"""Chunked prefill: prompts computed a few tokens per step, interleaved with other sequences' decode steps, give
exactly transformers' greedy tokens; a long prompt's chunks alternate with the running streams' decode steps."""

import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France. Berlin",
           "def add(a, b):\n", "Hello"]


def hf_greedy(ref, ids, n):
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=1, pad_token_id=2)
    tokens = out[0, len(ids):].tolist()
    return tokens[: tokens.index(1)] if 1 in tokens else tokens


def test_small_chunks_equal_transformers(tiny_checkpoint, family):
    path = tiny_checkpoint(family)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, block_size=4, max_num_seqs=8, max_prefill_chunk=3)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    outs = llm.generate(ids, SamplingParams(max_tokens=12))
    assert [o.token_ids for o in outs] == [hf_greedy(ref, p, 12) for p in ids]


def test_long_prompt_chunks_alternate_with_decode_steps(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("llama"), block_size=4, max_num_seqs=8, max_prefill_chunk=5)
    short = llm.make_sequence(llm.tokenizer.encode("Hello"), SamplingParams(max_tokens=40, ignore_eos=True))
    llm.add_sequence(short)
    llm.step()  # the short prompt fits one chunk: it is decoding from now on
    long_ids = llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    llm.add_sequence(llm.make_sequence(long_ids, SamplingParams(max_tokens=4)))
    kinds = []
    for _ in range(8):
        kinds.append(_kind_of_next_step(llm))
    assert "decode" in kinds and "prefill" in kinds
    # never two prefill chunks in a row while a stream is decoding
    assert all(not (a == b == "prefill") for a, b in zip(kinds, kinds[1:])), kinds
    assert all(n <= 5 for n in llm._chunk_sizes)


def _kind_of_next_step(llm):
    step = llm.scheduler.schedule()
    llm._chunk_sizes = getattr(llm, "_chunk_sizes", []) + (step.num_tokens if step.is_prefill else [])
    logits = llm.runner.run(step.seqs, step.num_tokens)
    for seq in step.seqs:  # the engine's own finishing is not under test here: append greedy tokens
        if seq.num_cached == len(seq):
            seq.output_ids.append(int(logits[step.seqs.index(seq)].argmax()))
    return "prefill" if step.is_prefill else "decode"
