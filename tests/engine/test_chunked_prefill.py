"""Chunked prefill: prompts computed a few tokens per step, packed into the same steps as other sequences' decodes,
give exactly transformers' greedy tokens; a long prompt is admitted in chunks that ride along with every decode step
of the running streams, sized by the fitted step cost."""

import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.scheduler import StepCost

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


def test_long_prompt_chunks_share_every_step_with_the_running_stream(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("llama"), block_size=4, max_num_seqs=8, max_prefill_chunk=5)
    short = llm.make_sequence(llm.tokenizer.encode("Hello"), SamplingParams(max_tokens=40, ignore_eos=True))
    llm.add_sequence(short)
    llm.step()  # the short prompt fits one chunk: it is decoding from now on
    long_ids = llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    long = llm.make_sequence(long_ids, SamplingParams(max_tokens=4))
    llm.add_sequence(long)
    steps = []
    while long.num_cached < len(long_ids):
        step = llm.scheduler.schedule()
        steps.append(list(zip(step.seqs, step.num_tokens)))
        logits = llm.runner.run(step.seqs, step.num_tokens)
        for i, seq in enumerate(step.seqs):  # the engine's own finishing is not under test here
            if seq.num_cached == len(seq):
                seq.output_ids.append(int(logits[i].argmax()))
    assert len(steps) >= -(-len(long_ids) // 5), "chunks are capped at max_prefill_chunk"
    for step in steps:  # the stream decodes in every step, first; the prompt's chunk rides along
        assert step[0] == (short, 1), step
        assert [n for seq, n in step if seq is long] and all(n <= 5 for seq, n in step if seq is long)


def test_a_burst_of_prompts_is_prefilled_in_one_packed_step(tiny_checkpoint):
    llm = LLM(tiny_checkpoint("llama"), block_size=4, max_num_seqs=8)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    for p in ids:
        llm.add_sequence(llm.make_sequence(p, SamplingParams(max_tokens=3)))
    step = llm.scheduler.schedule()
    assert step.num_decodes == 0 and step.num_tokens == [len(p) for p in ids]


def test_step_cost_fit_sizes_chunks_to_the_stall_ratio():
    cost = StepCost()
    assert cost.prompt_budget(4, 1.7) == StepCost.DEFAULT_BUDGET  # no measurements yet
    for tokens in (4, 40, 4, 100, 4, 20):  # seconds = 20 ms + 1 ms per token, exactly
        cost.record(tokens, 0.020 + 0.001 * tokens)
    # a decode-only step of 4 rows costs 24 ms; 1.7x that leaves 16.8 ms, i.e. 16 prompt tokens
    assert cost.prompt_budget(4, 1.7) == 16
    assert cost.prompt_budget(32, 1.7) == int(0.7 * (20 + 32))
