"""`tunelab bench generate` runs end to end (shrunk), and its figures are consistent with each other."""

from tunelab.engine.bench import run_generate_bench


def test_bench_generate_runs_small():
    r = run_generate_bench(requests=2, prompt_tokens=8, new_tokens=3, single_tokens=3, layers=1, hidden=64,
                           bandwidth_mbytes=16, stall_prompt_tokens=40, log=lambda *_: None)
    assert r.hf_b1_tok_s > 0 and r.ours_b1_tok_s > 0 and r.hf_sequential_tok_s > 0
    assert abs(r.b1_ratio - r.ours_b1_tok_s / r.hf_b1_tok_s) < 0.05 * r.b1_ratio + 0.01
    assert r.stall["idle_ms"] > 0 and r.stall["admitting_max_ms"] >= r.stall["admitting_median_ms"] > 0
    assert abs(r.roofline_tok_s - r.bandwidth_gbs * 1e3 / r.bytes_per_token_mb) < 0.02 * r.roofline_tok_s + 0.5


def test_against_llama_cpp_without_it_says_how_to_install(monkeypatch):
    import importlib.util
    import sys

    from typer.testing import CliRunner

    from tunelab.cli import app

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if not installed, wherever the suite runs
    assert importlib.util.find_spec("llama_cpp") is None
    result = CliRunner().invoke(app, ["bench", "generate", "--against", "llama-cpp"])
    assert result.exit_code != 0 and "pip install llama-cpp-python" in result.output


def test_bench_refuses_a_rate_from_failed_requests(monkeypatch):
    """A request that fails early finishes fast: the bench must say so rather than report the inflated rate."""
    import pytest

    from tunelab.engine import LLM
    from tunelab.engine.errors import EngineError

    real = LLM.generate

    def failing(self, prompts, params=None, **kw):
        outs = real(self, prompts, params, **kw)
        if len(prompts) > 1:  # the concurrent run: one request fails after its first token
            outs[1].completion_tokens, outs[1].finish_reason, outs[1].error = 1, "error", "RuntimeError: boom"
        return outs

    monkeypatch.setattr(LLM, "generate", failing)
    with pytest.raises(EngineError, match="ended after 1 of 3 tokens \\(error: RuntimeError: boom\\)"):
        run_generate_bench(requests=2, prompt_tokens=8, new_tokens=3, single_tokens=3, layers=1, hidden=64,
                           bandwidth_mbytes=16, stall_prompt_tokens=0, log=lambda *_: None)


def test_stall_measure_stops_and_says_so_when_a_stream_fails(tiny_checkpoint):
    """A decoding stream that fails would never reach the phase's goal; the measure must end, not wait forever."""
    import pytest

    from tunelab.engine import LLM
    from tunelab.engine.bench import measure_stall
    from tunelab.engine.errors import EngineError

    llm = LLM(tiny_checkpoint("llama"), max_num_seqs=8, block_size=4)
    real = llm.runner.run

    def run(seqs, num_tokens=None):
        if any(s.request_id == victim[0] for s in seqs):
            raise RuntimeError("boom")
        return real(seqs, num_tokens)

    victim = [None]
    real_add = llm.add_sequence

    def add(seq):  # the second stream fails from its first step on
        if victim[0] is None and len(llm._by_id) == 1:
            victim[0] = seq.request_id
        real_add(seq)

    llm.runner.run, llm.add_sequence = run, add
    with pytest.raises(EngineError, match="a request failed while measuring the stall \\(RuntimeError: boom"):
        measure_stall(llm, long_prompt_tokens=20, streams=3, idle_steps=3)
    assert not llm.has_work()
