"""`tunelab bench generate`: tunelab's engine side by side with transformers' `generate`, in one run.

The model is a checkpoint directory or built-in name (`--model`), or, without one, a random Llama-style checkpoint
(8 layers, hidden 512, vocab 32000: ~60M parameters) written to a temporary directory. transformers always runs in
float32 (the reference the targets are stated against); tunelab runs in `--dtype`. Prompts are random token ids
(both sides decode with `ignore_eos`, so every request produces exactly its token budget). Reported, as medians of
`--repeat` interleaved runs:
  - batch 1: decode tokens/s of each and their ratio, with the memory-bandwidth roofline (every weight but the
    embedding table is read once per token; bandwidth measured with a large tensor copy) and the fraction reached;
    on a GPU also without CUDA graphs (`enforce_eager`), so graphs on vs off is measured side by side;
  - N concurrent requests (P prompt tokens, T new tokens each): tunelab's aggregate tokens/s with all requests
    submitted at once vs transformers generating them one after another. Sequential requests are identical work,
    so transformers runs `hf_sample` of them and its time is scaled to N (said so in the output);
  - with `stall_prompt_tokens`, the time between tokens of 4 decoding streams, idle and while a long prompt is
    admitted (chunked prefill: the target is at most 2x idle).
transformers is a benchmark oracle here: imported lazily, never by the engine itself.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tunelab.engine.errors import EngineError
from tunelab.oracles import install_hint


@dataclass
class BenchResult:
    model: str
    device: str
    dtype: str
    params_millions: float
    threads: int
    load_average: float
    repeats: int
    bandwidth_gbs: float
    bytes_per_token_mb: float
    roofline_tok_s: float
    hf_b1_tok_s: float
    ours_b1_tok_s: float
    b1_ratio: float
    b1_roofline_fraction: float
    requests: int
    prompt_tokens: int
    new_tokens: int
    hf_sequential_tok_s: float
    ours_concurrent_tok_s: float
    concurrent_ratio: float
    hf_sequential_s: float
    ours_concurrent_s: float
    hf_sequential_measured: int  # how many of the N sequential requests transformers actually ran
    stall: dict | None = None  # time between tokens while a long prompt is admitted (measure_stall)
    llama_cpp_b1_tok_s: float | None = None
    llama_cpp_sequential_tok_s: float | None = None  # the N requests through llama.cpp one after another
    build: str | None = None  # the `tunelab build` directory measured, if any
    quant: str | None = None  # its weight quantisation (int8 / int4)
    # A quantised build's 16-bit counterparts on the same device: {dtype: {"b1_tok_s", "concurrent_tok_s"}}.
    sixteen_bit: dict | None = None
    # GPU: the same engine without CUDA graphs (enforce_eager=True), same workloads.
    eager_b1_tok_s: float | None = None
    eager_concurrent_tok_s: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_generate_bench(requests: int = 32, prompt_tokens: int = 128, new_tokens: int = 128, single_tokens: int = 128,
                       device: str = "cpu", dtype: str = "float32", layers: int = 8, hidden: int = 512,
                       seed: int = 0, bandwidth_mbytes: int = 512, model: str | None = None, repeat: int = 1,
                       hf_sample: int | None = None, single_prompt_tokens: int = 70, stall_prompt_tokens: int = 0,
                       against_gguf: str | None = None, build: str | None = None, heads: int = 8,
                       kv_heads: int | None = None, log=print) -> BenchResult:
    """With `build` (a `tunelab build` directory), tunelab runs the build as built and transformers its source
    model; `model` and `dtype` are then taken from the build's manifest."""
    from tunelab.engine import SamplingParams

    model, dtype, quant = _build_options(build, device) if build else (model, dtype, None)
    max_model_len = max(prompt_tokens, single_prompt_tokens, stall_prompt_tokens) + max(new_tokens, single_tokens) + 8
    shape = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "seed": seed}
    ref, llm, eager, path = _load_sides(model, build, dtype, device, max(requests, 1), max_model_len, shape)
    gen = torch.Generator().manual_seed(seed)
    vocab = llm.model.config.vocab_size
    prompts = [torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist() for _ in range(requests)]
    single = torch.randint(3, vocab, (single_prompt_tokens,), generator=gen).tolist()
    hf_sample = min(hf_sample or requests, requests)

    bandwidth = measure_bandwidth(device, bandwidth_mbytes)
    weights = _bytes_read_per_token(llm.model)
    roofline = bandwidth / weights
    load, params = _load_average(), _parameter_count(llm.model)
    ours_label = f"build {build} ({quant + ' weights, ' if quant else ''}{dtype})" if build else dtype
    log(f"model: {model or 'random Llama'} ({params / 1e6:.1f}M parameters), tunelab {ours_label} vs "
        f"transformers float32, {device}, {torch.get_num_threads()} threads; copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s; load average {load:.2f}")

    def hf(ids, n):
        x = torch.tensor([ids], device=device)
        with torch.inference_mode():
            ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)  # min_new_tokens masks EOS, as ignore_eos does on our side

    def ours(batch, n, engine=None):
        check_complete((engine or llm).generate(batch, SamplingParams(max_tokens=n, ignore_eos=True)), n)

    hf(single[:16], 4)
    ours([single[:16]], 4)  # warm-up: first-call allocations, kernel selection, the batch-1 CUDA graph
    hf_b1, ours_b1 = [], []
    for _ in range(repeat):  # interleaved, so a burst of load from elsewhere hits both sides alike
        hf_b1.append(single_tokens / _timed(lambda: hf(single, single_tokens), device))
        ours_b1.append(single_tokens / _timed(lambda: ours([single], single_tokens), device))
    hf_b1, ours_b1 = statistics.median(hf_b1), statistics.median(ours_b1)
    log(f"batch 1 ({single_prompt_tokens}-token prompt, {single_tokens} new): transformers {hf_b1:.1f} tok/s, "
        f"tunelab {ours_b1:.1f} tok/s ({ours_b1 / hf_b1:.2f}x); roofline {roofline:.1f} tok/s, "
        f"reached {ours_b1 / roofline:.0%}")

    context = max(prompt_tokens, single_prompt_tokens) + max(new_tokens, single_tokens) + 8
    llama = LlamaCpp(against_gguf, torch.get_num_threads(), context) if against_gguf else None
    llama_b1 = _llama_cpp_side(llama, single, single_tokens, repeat, ours_b1, log) if llama else None

    hf_seq_s, ours_s = _concurrent_side(hf, ours, prompts, new_tokens, hf_sample, repeat, device, log)
    total = requests * new_tokens
    eager_b1, eager_con = _eager_side(lambda b, n: ours(b, n, eager), (single, single_tokens), (prompts, new_tokens),
                                      repeat, device, (ours_b1, total / ours_s), roofline, log) if eager else (None,
                                                                                                      None)
    eager = None
    llama_seq = llama and _llama_cpp_sequential_side(llama, prompts[:hf_sample], new_tokens, repeat,
                                                     total / ours_s, log)
    stall = _stall_side(llm, stall_prompt_tokens, seed, log) if stall_prompt_tokens else None
    llm = None  # one engine's KV cache at a time
    sixteen = _sixteen_bit_side(path, device, quant, (single, single_tokens, ours_b1), (
        prompts, new_tokens, total / ours_s), repeat, max(requests, 1), max_model_len, log) if quant else None
    return BenchResult(
        build=build, quant=quant, sixteen_bit=sixteen, eager_b1_tok_s=eager_b1 and round(eager_b1, 1),
        eager_concurrent_tok_s=eager_con and round(eager_con, 1),
        stall=stall, llama_cpp_b1_tok_s=llama_b1 and round(llama_b1, 1), model=str(model or "random-llama"),
        llama_cpp_sequential_tok_s=llama_seq and round(llama_seq, 1), device=device, dtype=dtype,
        params_millions=round(params / 1e6, 1), threads=torch.get_num_threads(),
        load_average=round(load, 2), repeats=repeat, bandwidth_gbs=round(bandwidth / 1e9, 2),
        bytes_per_token_mb=round(weights / 1e6, 1), roofline_tok_s=round(roofline, 1),
        hf_b1_tok_s=round(hf_b1, 1), ours_b1_tok_s=round(ours_b1, 1), b1_ratio=round(ours_b1 / hf_b1, 2),
        b1_roofline_fraction=round(ours_b1 / roofline, 3), requests=requests, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, hf_sequential_tok_s=round(total / hf_seq_s, 1),
        ours_concurrent_tok_s=round(total / ours_s, 1), concurrent_ratio=round(hf_seq_s / ours_s, 2),
        hf_sequential_s=round(hf_seq_s, 2), ours_concurrent_s=round(ours_s, 2), hf_sequential_measured=hf_sample,
    )


def _concurrent_side(hf, ours, prompts, new_tokens, hf_sample, repeat, device, log) -> tuple[float, float]:
    """Seconds for the N requests: transformers one after another (`hf_sample` run, scaled to N), tunelab all at
    once; interleaved like batch 1."""
    requests, hf_seq, ours_con = len(prompts), [], []
    # Warm-up: the recorded decode step of the whole batch (vLLM records its graphs at start-up; tunelab records one
    # per batch size when it first runs, ~0.1-0.3 s each on a CPU).
    ours([p[:8] for p in prompts], 3)
    for _ in range(repeat):
        hf_seq.append(_timed(lambda: [hf(p, new_tokens) for p in prompts[:hf_sample]], device) * requests / hf_sample)
        ours_con.append(_timed(lambda: ours(prompts, new_tokens), device))
    hf_seq_s, ours_s = statistics.median(hf_seq), statistics.median(ours_con)
    total = requests * new_tokens
    scaled = "" if hf_sample == requests else f", {hf_sample} run and scaled to {requests}"
    log(f"{requests} concurrent ({len(prompts[0])} prompt + {new_tokens} new each): transformers one by one "
        f"{total / hf_seq_s:.1f} tok/s ({hf_seq_s:.1f}s{scaled}), tunelab {total / ours_s:.1f} tok/s "
        f"({ours_s:.1f}s): {hf_seq_s / ours_s:.1f}x")
    return hf_seq_s, ours_s


def _eager_side(run, single, concurrent, repeat, device, graphed, roofline, log) -> tuple[float, float]:
    """GPU: the same workloads through the engine without CUDA graphs (`enforce_eager`): (batch-1, concurrent)
    tokens/s, after the graphed runs rather than interleaved with them (GPUs are not shared like this CPU)."""
    (prompt, single_tokens), (prompts, new_tokens) = single, concurrent
    run([prompt[:16]], 4)  # warm-up
    b1 = statistics.median(single_tokens / _timed(lambda: run([prompt], single_tokens), device) for _ in range(repeat))
    con = statistics.median(len(prompts) * new_tokens / _timed(lambda: run(prompts, new_tokens), device)
                            for _ in range(repeat))
    log(f"without CUDA graphs (enforce_eager): batch 1 {b1:.1f} tok/s (reached {b1 / roofline:.0%}), "
        f"{len(prompts)} concurrent {con:.1f} tok/s; CUDA graphs {graphed[0] / b1:.2f}x and {graphed[1] / con:.2f}x")
    return b1, con


def check_complete(outputs, new_tokens: int) -> None:
    """A rate counts only requests that produced every token asked for: a request that failed early would make
    the engine look faster than it is (seen once on a GPU, where a failing CUDA graph ended requests early)."""
    for out in outputs:
        if out.completion_tokens != new_tokens:
            raise EngineError(f"bench: request {out.request_id} ended after {out.completion_tokens} of {new_tokens} "
                              f"tokens ({out.finish_reason}{': ' + out.error if out.error else ''}); no rate is "
                              "reported for a run with failed requests")


def _build_options(build: str, device: str) -> tuple[str, str, str | None]:
    """(source model, dtype, quantisation mode or None) of a build directory."""
    from tunelab.engine.build import MANIFEST, check_build

    manifest = check_build(build, device)
    if manifest is None:
        raise EngineError(f"--build {build}: not a tunelab build (no {MANIFEST}); make one with `tunelab build`, or "
                          "pass a checkpoint with --model")
    return manifest.source, manifest.dtype, manifest.quant["mode"] if manifest.quant else None


def _parameter_count(model) -> int:
    """Parameters, counting a quantised layer's weight matrix (held in integer buffers) as its float shape."""
    from tunelab.models.quantize import Int4Linear, Int8Linear

    quantised = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, (Int4Linear, Int8Linear)))
    return model.num_parameters() + quantised


def _load_sides(model, build, dtype, device, max_num_seqs, max_model_len, shape):
    """(transformers float32 on the source model, tunelab's LLM, on a GPU the same LLM without CUDA graphs (else
    None), the source checkpoint's path)."""
    from tunelab.engine import LLM
    from tunelab.models.checkpoint import resolve_checkpoint

    AutoModelForCausalLM = _transformers().AutoModelForCausalLM
    with tempfile.TemporaryDirectory() as tmp:
        path = resolve_checkpoint(model) if model else write_random_llama(Path(tmp), **shape)
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        engines = [LLM(build or path, dtype=None if build else getattr(torch, dtype), device=device,
                       max_num_seqs=max_num_seqs, max_model_len=max_model_len, enforce_eager=eager)
                   for eager in ((False, True) if torch.device(device).type == "cuda" else (False,))]
    return ref, engines[0], engines[1] if len(engines) > 1 else None, path


def _sixteen_bit_side(path, device, quant, single, concurrent, repeat, max_num_seqs, max_model_len, log) -> dict:
    """The same source model in float16 and bfloat16 (converted at load), same workloads: whether the quantised
    build is worth it on this device, said in the output rather than left to the reader."""
    from tunelab.engine import LLM, SamplingParams

    (prompt, single_tokens, quant_b1), (prompts, new_tokens, quant_con) = single, concurrent
    result = {}
    for dtype in ("float16", "bfloat16"):
        llm = LLM(path, dtype=getattr(torch, dtype), device=device, max_num_seqs=max_num_seqs,
                  max_model_len=max_model_len)
        llm.generate([prompt[:16]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        b1 = statistics.median(single_tokens / _timed(lambda: check_complete(llm.generate(
            [prompt], SamplingParams(max_tokens=single_tokens, ignore_eos=True)), single_tokens), device)
            for _ in range(repeat))
        con = statistics.median(len(prompts) * new_tokens / _timed(lambda: check_complete(llm.generate(
            prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True)), new_tokens), device)
            for _ in range(repeat))
        result[dtype] = {"b1_tok_s": round(b1, 1), "concurrent_tok_s": round(con, 1)}
        del llm
    for label, key, ours in (("batch 1", "b1_tok_s", quant_b1), (f"{len(prompts)} concurrent", "concurrent_tok_s",
                                                                  quant_con)):
        best = max(result, key=lambda d: result[d][key])
        ratio = ours / result[best][key]
        verdict = "faster than" if ratio >= 1 else "SLOWER than"
        log(f"{label}: {quant} {ours:.1f} tok/s, float16 {result['float16'][key]:.1f}, bfloat16 "
            f"{result['bfloat16'][key]:.1f}: {quant} is {ratio:.2f}x {best}, {verdict} 16-bit on this device")
    return result


def _bytes_read_per_token(model) -> int:
    """Weight bytes one decode step reads: every matrix but the embedding gather (the tied head reads it whole);
    quantised layers' integers and scales are buffers."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    weights = sum(p.numel() * p.element_size() for n, p in tensors if "embed_tokens" not in n)
    if model.config.tie_word_embeddings:
        weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    return weights


def _llama_cpp_side(llama: LlamaCpp, prompt: list[int], new_tokens: int, repeat: int, ours_b1: float, log) -> float:
    llama_b1 = statistics.median(new_tokens / _timed(lambda: llama.generate(prompt, new_tokens)) for _ in range(repeat))
    log(f"batch 1: llama.cpp ({llama.name}) {llama_b1:.1f} tok/s; tunelab/llama.cpp {ours_b1 / llama_b1:.2f}x")
    return llama_b1


def _llama_cpp_sequential_side(llama: LlamaCpp, prompts: list[list[int]], new_tokens: int, repeat: int,
                               ours_concurrent: float, log) -> float:
    # llama-cpp-python serves one request at a time: its sequential rate is its concurrent one.
    rate = statistics.median(llama.sequential(prompts, new_tokens) for _ in range(repeat))
    log(f"the same requests through llama.cpp one by one: {rate:.1f} tok/s ({len(prompts)} run); tunelab concurrent / "
        f"llama.cpp {ours_concurrent / rate:.2f}x")
    return rate


def _stall_side(llm, prompt_tokens: int, seed: int, log) -> dict:
    stall = measure_stall(llm, prompt_tokens, seed=seed)
    log(f"time between tokens of 4 streams: idle {stall['idle_ms']} ms; while a {prompt_tokens}-token "
        f"prompt is admitted {stall['admitting_median_ms']} ms median ({stall['ratio_median']}x), "
        f"{stall['admitting_max_ms']} ms worst")
    return stall


class LlamaCpp:
    """llama.cpp through llama-cpp-python, an oracle imported only here: `pip install llama-cpp-python` (builds
    llama.cpp from source, ~10 minutes on 2 cores). Greedy, EOS not checked, prompt included in the timings."""

    def __init__(self, gguf: str, threads: int, n_ctx: int):
        try:
            import llama_cpp
        except ImportError:
            raise EngineError("--against llama-cpp needs llama-cpp-python: pip install llama-cpp-python "
                              "(it builds llama.cpp from source; see docs/benchmarks.md)") from None
        self.name = Path(gguf).name
        self.model = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                     verbose=False)
        self.generate([1, 2, 3], 4)  # warm-up

    def generate(self, prompt: list[int], new_tokens: int) -> None:
        for i, _ in enumerate(self.model.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0,
                                                  reset=True)):
            if i + 1 >= new_tokens:
                break

    def sequential(self, prompts: list[list[int]], new_tokens: int) -> float:
        """Tokens/s over `prompts` served one after another."""
        return len(prompts) * new_tokens / _timed(lambda: [self.generate(p, new_tokens) for p in prompts])


def measure_stall(llm, long_prompt_tokens: int = 2000, streams: int = 4, idle_steps: int = 12, seed: int = 0) -> dict:
    """Time between tokens of `streams` running sequences, idle and while a `long_prompt_tokens` prompt is admitted
    (chunked prefill interleaves its chunks with their decode steps): medians and the worst gap, in ms."""
    from tunelab.engine import SamplingParams

    gen = torch.Generator().manual_seed(seed)
    vocab = llm.model.config.vocab_size
    room = llm.max_model_len - 16
    ids = [llm.make_sequence(torch.randint(3, vocab, (16,), generator=gen).tolist(),
                             SamplingParams(max_tokens=room, ignore_eos=True)) for _ in range(streams)]
    for seq in ids:
        llm.add_sequence(seq)
    names = {s.request_id for s in ids}
    last: dict[str, float] = {}
    gaps: list[float] = []

    def run_until(done) -> list[float]:
        gaps.clear()
        # A stream that failed stops the phase: waiting for its tokens would wait forever.
        while not done() and not any(s.finish_reason == "error" for s in ids):
            outs = llm.step()
            now = time.perf_counter()
            for out in outs:
                if out.request_id in names:
                    if out.request_id in last:
                        gaps.append(now - last[out.request_id])
                    last[out.request_id] = now
        return list(gaps)

    steps = iter(range(10**9))
    run_until(lambda: all(len(s.output_ids) >= 2 for s in ids))  # all prompts in, all decoding
    idle = run_until(lambda: next(steps) >= idle_steps)
    long_seq = llm.make_sequence(torch.randint(3, vocab, (long_prompt_tokens,), generator=gen).tolist(),
                                 SamplingParams(max_tokens=1, ignore_eos=True))
    llm.add_sequence(long_seq)
    busy = run_until(lambda: long_seq.finished)
    failed = [s for s in [*ids, long_seq] if s.finish_reason == "error"]
    for seq in [*ids, long_seq]:
        llm.abort(seq.request_id)
    if failed:
        raise EngineError(f"bench: a request failed while measuring the stall ({failed[0].error}); "
                          "no figure is reported for a run with failed requests")
    idle_ms, busy_ms = 1e3 * statistics.median(idle), 1e3 * statistics.median(busy)
    return {"idle_ms": round(idle_ms, 1), "admitting_median_ms": round(busy_ms, 1),
            "admitting_max_ms": round(1e3 * max(busy), 1), "ratio_median": round(busy_ms / idle_ms, 2)}


def write_random_llama(path: Path, layers: int = 8, hidden: int = 512, seed: int = 0, heads: int = 8,
                       kv_heads: int | None = None) -> Path:
    """A random Llama-style checkpoint with a word-level tokenizer (the bench feeds token ids). `--layers 22
    --hidden 2048 --heads 32 --kv-heads 4` is TinyLlama-1.1B's shape."""
    from tokenizers import Tokenizer, models

    transformers = _transformers()
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=kv_heads or heads,
                                      max_position_embeddings=2048, bos_token_id=0, eos_token_id=1,
                                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t2"))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "t0", "eos_token": "t1"}))
    return path


def measure_bandwidth(device: str = "cpu", mbytes: int = 512) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once), best of five."""
    src = torch.ones(mbytes * (1 << 20) // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        best = min(best, _timed(lambda: dst.copy_(src), device))
    return 2 * src.numel() * 4 / best


def _transformers():
    try:
        import transformers
    except ImportError:
        raise EngineError(install_hint("generate", ["transformers"])) from None
    return transformers


def _load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _timed(fn, device: str = "cpu") -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start
