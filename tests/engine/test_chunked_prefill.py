"""Chunked prefill: prompts computed a few tokens per step, packed into the same steps as other sequences' decodes,
give exactly transformers' greedy tokens; a long prompt is admitted in chunks that ride along with every decode step
of the running streams, sized by the fitted step cost."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.scheduler import Budget, StepCost

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
    # No prefix cache: the prompts share their first token, which would otherwise be copied rather than computed.
    llm = LLM(tiny_checkpoint("llama"), block_size=4, max_num_seqs=8, enable_prefix_caching=False)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    for p in ids:
        llm.add_sequence(llm.make_sequence(p, SamplingParams(max_tokens=3)))
    step = llm.scheduler.schedule()
    assert step.num_decodes == 0 and step.num_tokens == [len(p) for p in ids]


def test_step_cost_fit_sizes_chunks_to_the_stall_ratio():
    cost = StepCost()
    assert cost.headroom(4, 1.7) == (0.0, None)  # no measurements yet: Budget falls back to a token count
    # A decode-only step of d rows: 20 ms + 1 ms per row; prompt chunks add 1 ms per token and 1 us per attended
    # (query, key) pair, exactly.
    def record(decodes, tokens=0, attended=0):
        cost.record(decodes, tokens, attended, 0.020 + 0.001 * (decodes + tokens) + 1e-6 * attended)

    for decodes, tokens, attended in ((4, 0, 0), (4, 0, 0), (4, 36, 900), (8, 0, 0), (4, 96, 6000), (4, 16, 2000),
                                      (4, 60, 20000)):
        record(decodes, tokens, attended)
    seconds, fit = cost.headroom(4, 1.7)
    assert fit == pytest.approx((0.001, 1e-6), rel=1e-6)
    assert seconds == pytest.approx(0.7 * (0.020 + 0.004))
    assert cost.headroom(6, 1.7)[0] == pytest.approx(0.7 * 0.026)  # a decode count not seen: the fitted line
    # a chunk late in a long prompt attends to more keys, so fewer of its tokens fit: n*1ms + n*(s+n)*1us <= 50ms
    early, late = Budget(1000, 1000), Budget(1000, 1000)
    for budget in (early, late):
        budget.seconds, budget.fit = 0.050, fit
    n_early, n_late = early.take(0, 2000), late.take(1500, 500)
    assert n_early == 47 and n_late == 19
    assert 0.001 * n_late + 1e-6 * n_late * (1500 + n_late) <= 0.050 < 0.001 * 20 + 1e-6 * 20 * 1520
    # the same at the ratio's 16.8 ms: 16 tokens early; late, only 6 would fit, and the step takes one block anyway
    early, late = Budget(1000, 1000), Budget(1000, 1000)
    for budget in (early, late):
        budget.seconds, budget.fit = seconds, fit
    assert early.take(0, 2000) == 16 and late.take(1500, 500) == Budget.MIN_TOKENS == 16
    assert late.take(0, 100) == 0 and not late.left()  # the floor is per step, not per sequence


def test_chunks_of_recorded_steps_are_rounded_to_a_recorded_size():
    """With recorded mixed steps (a CPU with tunelab's attention operator) a chunk beside decodes is rounded down to
    a recorded size, at most the largest, at least the smallest; a prompt's last chunk keeps its length (the step
    pads it). Without a time limit (nothing decodes) nothing is rounded."""
    fit = (0.001, 1e-6)  # 1 ms per token, 1 us per attended pair

    def take(seconds, cached, wanted, sizes=(4, 8, 16, 32, 64)):
        budget = Budget(1000, 1000)
        budget.seconds, budget.fit = seconds, fit
        budget.sizes = sizes
        return budget.take(cached, wanted)

    assert take(0.050, 0, 2000) == 32  # 47 fit
    assert take(0.500, 0, 2000) == 64  # the largest recorded size
    assert take(0.0001, 1500, 500) == 4  # nothing fits: the smallest, not MIN_TOKENS
    assert take(0.050, 0, 21) == 21  # the prompt's last chunk, padded to 32 by the step
    budget = Budget(1000, 1000)
    budget.sizes = (4, 8)
    assert budget.take(0, 2000) == 8  # no time limit yet: the largest size caps it


def test_step_cost_separates_a_mixed_steps_fixed_cost_from_its_tokens():
    """A step with any chunk costs 25 ms more than a decode-only one (it runs eagerly), plus 0.2 ms per token.
    The fit keeps the 25 ms out of the per-token cost (charged to the tokens, it made chunks shrink step after step,
    to a token or two); when it alone exceeds the headroom, the chunks still get MIN_SHARE of the headroom."""
    cost = StepCost()
    for _ in range(3):
        cost.record(4, 0, 0, 0.024)
    for tokens in (64, 8, 30, 2, 16):
        cost.record(4, tokens, 0, 0.024 + 0.025 + 0.0002 * tokens)
    seconds, fit = cost.headroom(4, 1.7)
    assert fit == pytest.approx((0.0002, 0.0), abs=1e-9)
    assert seconds == pytest.approx(StepCost.MIN_SHARE * 0.7 * 0.024)
    budget = Budget(1000, 1000)
    budget.seconds, budget.fit = seconds, fit
    assert budget.take(0, 2000) == 21  # 4.2 ms of tokens at 0.2 ms each
    seconds, _ = cost.headroom(4, 3.5)  # room beyond the fixed cost: the tokens get the rest
    assert seconds == pytest.approx(2.5 * 0.024 - 0.025)


def test_step_cost_baseline_is_the_present_decode_count_not_a_past_workload():
    cost = StepCost()
    for _ in range(20):  # a past burst: 32 streams decoding, and a prefill with nothing decoding
        cost.record(32, 0, 0, 0.200)
        cost.record(0, 4096, 10**6, 5.0)
    for _ in range(3):  # now 4 streams
        cost.record(4, 0, 0, 0.040)
    for tokens in (10, 20):  # chunks beside them: 2 ms per token
        cost.record(4, tokens, 0, 0.040 + 0.002 * tokens)
    seconds, fit = cost.headroom(4, 1.7)
    assert seconds == pytest.approx(0.7 * 0.040)
    assert fit == pytest.approx((0.002, 0.0), abs=1e-9)


def test_a_one_token_last_chunk_is_a_prompt_chunk_not_a_decode(tiny_checkpoint):
    # The last chunk of a prompt may be one token; only a sequence past its prompt takes the dense decode path (a
    # prompt mid-way there would gather its whole context into a dense row at every such step, and free it again).
    path = tiny_checkpoint("llama")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = ref_ids = LLM(path).tokenizer.encode(PROMPTS[0])
    llm = LLM(path, block_size=4, max_num_seqs=2, max_prefill_chunk=len(ids) - 1)
    out = llm.generate([ids], SamplingParams(max_tokens=4))[0].token_ids
    assert out == hf_greedy(ref, ref_ids, 4)
    assert llm.runner.decode_paths["dense"] == len(out) - 1  # the three decodes, not the one-token chunk
