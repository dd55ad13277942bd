"""One request's failure (in the forward pass or in sampling) fails that request alone; tiny temperatures are greedy."""

import pytest
import torch

from tunelab.engine import LLM, EngineError, SamplingParams

PROMPTS = ["The quick brown fox", "Paris is", "Hello, how are", "def add(a, b):"]


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return LLM(tiny_checkpoint("llama"), block_size=4)


def test_a_temperature_too_small_to_divide_by_is_greedy(llm):
    greedy = llm.generate(PROMPTS, SamplingParams(max_tokens=12))
    tiny = llm.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=1e-300, seed=3))
    assert [o.token_ids for o in tiny] == [o.token_ids for o in greedy]
    assert all(o.finish_reason in ("stop", "length") for o in tiny)


def test_a_row_that_breaks_the_forward_pass_fails_alone(llm, monkeypatch):
    clean = llm.generate(PROMPTS, SamplingParams(max_tokens=10))
    poison = llm.tokenizer.encode("Berlin")  # a prompt the patched runner refuses whenever it is in the batch
    real_run = llm.runner.run

    def run(seqs):
        if any(s.prompt_ids == poison for s in seqs):
            raise RuntimeError("simulated kernel failure on one row")
        return real_run(seqs)

    monkeypatch.setattr(llm.runner, "run", run)
    outs = llm.generate(PROMPTS[:2] + [poison] + PROMPTS[2:], SamplingParams(max_tokens=10))
    assert outs[2].finish_reason == "error" and "simulated kernel failure" in outs[2].error
    others = outs[:2] + outs[3:]
    assert [o.token_ids for o in others] == [o.token_ids for o in clean]
    assert llm.block_manager.num_used == 0


def test_a_row_with_nan_logits_fails_alone(llm, monkeypatch):
    clean = llm.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.8, seed=5))
    real_run = llm.runner.run

    def run(seqs):
        logits = real_run(seqs).clone()  # an inference-mode tensor: edit a copy
        for i, s in enumerate(seqs):
            if s.params.seed == 666:
                logits[i] = float("nan")
        return logits

    monkeypatch.setattr(llm.runner, "run", run)
    params = [SamplingParams(max_tokens=8, temperature=0.8, seed=5)] * 2 + [
        SamplingParams(max_tokens=8, temperature=0.8, seed=666)] + [SamplingParams(max_tokens=8, temperature=0.8,
                                                                                   seed=5)] * 2
    outs = llm.generate(PROMPTS[:2] + ["x"] + PROMPTS[2:], params)
    assert outs[2].finish_reason == "error", outs[2]
    assert [o.finish_reason for o in outs] == ["length"] * 2 + ["error"] + ["length"] * 2, outs
    assert [o.token_ids for o in outs[:2] + outs[3:]] == [o.token_ids for o in clean]
    assert llm.block_manager.num_used == 0


def test_out_of_range_values_are_engine_errors_naming_the_field():
    for kwargs, field in [(dict(seed=1 << 64), "seed"), (dict(seed=-(1 << 63) - 1), "seed"),
                          (dict(temperature=float("nan")), "temperature"), (dict(max_tokens=True), "max_tokens"),
                          (dict(logprobs=21), "logprobs"), (dict(logit_bias={5: 101}), "logit_bias")]:
        with pytest.raises(EngineError, match=field):
            SamplingParams(**kwargs)
    assert SamplingParams(seed=(1 << 64) - 1).seed == (1 << 64) - 1
    torch.Generator().manual_seed((1 << 64) - 1)  # the documented range is what torch accepts
    torch.Generator().manual_seed(-(1 << 63))
