"""The static decode step that decode graphs record (engine/decode_graphs.py), on CPU both as a TorchScript trace
(what a CPU engine runs by default) and run as Python ("eager"; "sdpa" is the step without tunelab's attention
operator, which is what a CUDA graph records): greedy outputs equal transformers' and the ordinary decode path's,
with padded batches, GQA, sliding windows, sequences joining and leaving, and the dense buffer growing under the
graphs. CUDA capture and replay need a GPU (CI has none);
scripts/gpu-check.sh runs them there."""

import os

import pytest
import torch
from test_greedy_parity import PROMPTS, hf_greedy, references  # noqa: F401 - a fixture

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.cpu_kernels import native_kernels
from tunelab.engine.decode_graphs import CHUNK_SIZES, DecodeGraphs, _buckets


# "trace": the CPU default, a trace of the step with tunelab's native attention operator where it could be built;
# "eager": the same step as Python; "sdpa": the step without a fused operator (masked SDPA over the dense rows);
# "triton": the step with the GPU's Triton operators (engine/gpu_kernels.py), run here by Triton's interpreter.
MODES = ["trace", "eager", "sdpa", "triton"]


def static_llm(path, mode="trace", max_num_seqs=8, **kw) -> LLM:
    if mode == "trace":  # the CPU default
        llm = LLM(path, max_num_seqs=max_num_seqs, block_size=4, **kw)
        assert llm.runner.graphs.mode == "trace"
        assert (llm.runner.decode_op is not None) == native_kernels()
        return llm
    llm = LLM(path, max_num_seqs=max_num_seqs, block_size=4, enforce_eager=True, **kw)
    assert llm.runner.graphs is None
    llm.runner.decode_op = torch.ops.tunelab.decode_attention if mode == "eager" and native_kernels() else None
    if mode == "triton":
        pytest.importorskip("triton", reason="Triton is in the test extra (pyproject)")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("on a GPU machine the Triton operators run on the GPU: scripts/gpu_check.py")
        from tunelab.engine import gpu_kernels

        llm.runner.decode_op, llm.runner.swiglu_op = gpu_kernels.decode_attention, gpu_kernels.silu_mul
        llm.runner.norm_op = gpu_kernels.rms_norm
    llm.runner.graphs = DecodeGraphs(llm.runner, max_num_seqs, "eager")
    if llm.runner.decode_op is torch.ops.tunelab.decode_attention:  # what the runner sets with graphs on a CPU
        llm.runner.chunk_sizes = llm.scheduler.chunk_sizes = CHUNK_SIZES
    return llm


@pytest.mark.parametrize("mode", MODES)
def test_padded_static_decode_equals_transformers(references, family, mode):  # noqa: F811
    path, ref = references(family)
    llm = static_llm(path, mode)
    ids = [llm.tokenizer.encode(p) for p in PROMPTS]
    lengths = [20, 7, 13, 3]  # the batch shrinks as sequences finish: 3 rows run in bucket 4 (one padding row)
    outs = llm.generate(ids, [SamplingParams(max_tokens=n) for n in lengths])
    for prompt, n, out in zip(ids, lengths, outs):
        assert out.token_ids == hf_greedy(ref, prompt, n)
    graphs = llm.runner.graphs
    assert graphs.replays >= max(len(o.token_ids) for o in outs) - 2, "decode-only steps took the static step"
    assert graphs.padding > 0, "some step ran a padded batch"


@pytest.mark.parametrize("mode", MODES)
def test_static_decode_survives_the_dense_buffer_growing(references, mode):  # noqa: F811
    """A long generation outgrows the dense rows' first capacity (64 columns): the buffer is reallocated, and the
    steps after it (graphs captured on the old buffer would point at freed memory) still decode correctly."""
    path, ref = references("llama")
    llm = static_llm(path, mode)
    prompt = llm.tokenizer.encode(PROMPTS[1])
    first = []
    seq = llm.make_sequence(prompt, SamplingParams(max_tokens=90, ignore_eos=True))
    llm.add_sequence(seq)
    while llm.has_work():
        llm.step()
        first.append(id(llm.runner.slots.k))
    assert len(set(first) - {id(None)}) >= 2, "the dense buffer was reallocated during the generation"
    full = ref.generate(torch.tensor([prompt]), max_new_tokens=90, min_new_tokens=90, do_sample=False, pad_token_id=2)
    assert seq.output_ids == full[0, len(prompt):].tolist()


@pytest.mark.parametrize("mode", MODES)
def test_static_decode_equals_the_ordinary_path_with_arrivals_and_sampling(references, mode):  # noqa: F811
    """Sequences arriving while others decode (mixed steps take the ordinary path, decode-only steps the static
    one), seeded sampling included: the same tokens as an engine without the static step."""
    path, _ = references("mistral")  # sliding window 6, one kv head

    def run(llm):
        params = [SamplingParams(max_tokens=n, ignore_eos=True, temperature=t, seed=7)
                  for n, t in zip([12, 30, 5, 18, 9], [0.0, 0.8, 0.0, 1.0, 0.0])]
        prompts = [llm.tokenizer.encode(p) for p in PROMPTS + PROMPTS[:1]]
        pending = [llm.make_sequence(p, sp) for p, sp in zip(prompts, params)]
        seqs = list(pending)
        steps = 0
        while pending or llm.has_work():
            if pending and steps % 3 == 0:
                llm.add_sequence(pending.pop(0))
            llm.step()
            steps += 1
        return [s.output_ids for s in seqs]

    ordinary = LLM(path, max_num_seqs=8, block_size=4, enforce_eager=True)
    static = static_llm(path, mode)
    assert run(static) == run(ordinary)
    assert static.runner.graphs.replays > 0
    if mode in ("trace", "eager") and native_kernels():  # arrivals rode in recorded steps beside the decodes
        assert static.runner.graphs.mixed > 0


@pytest.mark.parametrize("mode", ["trace", "eager"])
def test_a_long_prompt_admitted_in_recorded_steps_beside_decodes(references, family, mode):  # noqa: F811
    """A long prompt arrives while three sequences decode: its chunks (8 tokens, the last padded) ride in recorded
    steps beside the decode rows, in a dense row of its own, and it goes on decoding from that row. Its output equals
    transformers' greedy one, the decoding sequences' outputs equal an engine's without recordings (which the other
    tests hold to transformers), the prompt's K/V reached its paged blocks (a second request sharing the prompt
    hits the prefix cache and gives the same tokens), and the steps with a chunk did replay a recording."""
    if not native_kernels():
        pytest.skip("recorded steps carry prompt chunks only with tunelab's attention operator")
    path, ref = references(family)

    def run(llm):
        short = [llm.tokenizer.encode(p) for p in PROMPTS[:3]]
        seqs = [llm.make_sequence(ids, SamplingParams(max_tokens=40, ignore_eos=True)) for ids in short]
        for seq in seqs:
            llm.add_sequence(seq)
        for _ in range(3):
            llm.step()
        assert all(seq.output_ids for seq in seqs), "the short prompts decode before the long one arrives"
        late = llm.make_sequence(long, SamplingParams(max_tokens=12))
        llm.add_sequence(late)
        while llm.has_work():
            llm.step()
        return [seq.output_ids for seq in seqs], late.output_ids

    llm = static_llm(path, mode, max_prefill_chunk=8)
    if llm.runner.chunk_sizes is None:
        pytest.skip(f"{family}: no fused q/k/v projection, so no recorded chunk")
    long = (llm.tokenizer.encode(" ".join(PROMPTS)) * 8)[:117]
    decoded, late = run(llm)
    assert llm.runner.graphs.mixed >= len(long) // 8, "the long prompt went in recorded steps"
    assert late == hf_greedy(ref, long, 12)
    assert decoded == run(LLM(path, max_num_seqs=8, block_size=4, enforce_eager=True, max_prefill_chunk=8))[0]
    hits = llm.block_manager.hit_tokens
    (again,) = llm.generate([long], SamplingParams(max_tokens=12))
    assert again.token_ids == late
    assert llm.block_manager.hit_tokens - hits >= 100, "the second request found the first one's blocks"


@pytest.mark.parametrize("max_rows, expected", [
    (1, [1]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (20, [1, 2, 4, 8, 16, 20]), (64, [1, 2, 4, 8, 16, 24, 32, 40, 48,
                                                                                   56, 64]),
])
def test_batch_buckets(max_rows, expected):
    assert _buckets(max_rows) == expected


def test_a_failed_capture_falls_back_to_eager_decoding(references, monkeypatch):  # noqa: F811
    """Recording a graph can fail (a CUDA capture did once, inside torch's allocator); the requests must not: the step
    runs eagerly, graphs stay off, and the output is what an engine without graphs gives."""
    path, ref = references("llama")
    llm = static_llm(path)

    def broken(*bucket):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(llm.runner.graphs, "_record", broken)
    prompt = llm.tokenizer.encode(PROMPTS[0])
    (out,) = llm.generate([prompt], SamplingParams(max_tokens=12))
    assert out.token_ids == hf_greedy(ref, prompt, 12) and out.finish_reason in ("stop", "length")
    assert llm.runner.graphs.failure == "RuntimeError: capture failed" and llm.runner.graphs.replays == 0


def test_dense_rows_reserve_the_whole_context_where_it_fits():
    """On a GPU (full_columns set) the dense rows take the whole context at once, so captured graphs are not dropped
    by reallocations as a sequence grows; where that would not fit they grow step by step as on CPU."""
    from tunelab.engine.model_runner import DecodeSlots

    per_column = 2 * 2 * 8  # layers x kv heads x head dim
    slots = DecodeSlots(2, 2, 8, torch.float32, "cpu", max_elements=per_column * 600, full_columns=300)
    assert slots._reserve(1, 10) and slots.capacity == 300
    first = slots.k
    assert slots._reserve(1, 250) and slots.k is first, "no reallocation as the sequence grows"
    assert slots._reserve(2, 150) and slots.capacity == 300, "two rows of 300 columns still fit"
    small = DecodeSlots(2, 2, 8, torch.float32, "cpu", max_elements=per_column * 200, full_columns=300)
    assert small._reserve(1, 10) and small.capacity == 64, "the context does not fit: growing by need, as on CPU"
    plain = DecodeSlots(2, 2, 8, torch.float32, "cpu", max_elements=per_column * 600)
    assert plain._reserve(1, 10) and plain.capacity == 64


def test_dense_rows_double_only_when_rows_are_short():
    """Rows grow ahead (doubling) when a step needs more rows; when only columns are short the row count stays, so
    growing the columns (a long prompt's row) does not also double every row (measured: 2-4 s steps)."""
    from tunelab.engine.model_runner import DecodeSlots

    slots = DecodeSlots(2, 2, 8, torch.float32, "cpu", max_elements=2 * 2 * 8 * 10**5)
    assert slots._reserve(3, 10) and slots.k.shape[1] == 3
    assert slots._reserve(4, 10) and slots.k.shape[1] == 6, "more rows: doubled ahead"
    assert slots._reserve(5, 500) and slots.k.shape[1] == 6 and slots.capacity >= 500, "more columns: rows kept"
