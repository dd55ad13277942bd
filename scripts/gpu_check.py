"""GPU checks of the engine, for a machine with CUDA (CI has none; the CPU suite runs the graphed decode step
eagerly, tests/engine/test_decode_graphs.py): decode steps replayed as CUDA graphs give the tokens that the eager
engine and transformers give, and the GPU RMSNorm kernel matches Llama's form to bf16 rounding. With --profile,
where a batch-1 decode step's GPU time goes on a random TinyLlama-1.1B-shaped model in bf16 (kernels per step, the
matrix products' share), which explains how far batch 1 is from the bandwidth roofline.
Run by scripts/gpu-check.sh."""

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tunelab.engine import LLM, SamplingParams
from tunelab.engine.bench import write_random_llama
from tunelab.models.transformer import RMSNorm


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    failures = []
    gen = torch.Generator().manual_seed(0)
    lengths = [40, 7, 25, 3, 33, 12, 18, 9]  # the batch shrinks as they finish: padded buckets
    prompts = [torch.randint(3, 32000, (int(n),), generator=gen).tolist() for n in torch.randint(5, 60, (8,))]
    params = [SamplingParams(max_tokens=n) for n in lengths]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_llama(Path(tmp), layers=4, hidden=256, heads=8, kv_heads=2)
        from transformers import AutoModelForCausalLM

        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda").eval()
        expected = []
        for ids, n in zip(prompts, lengths):
            out = ref.generate(torch.tensor([ids], device="cuda"), max_new_tokens=n, do_sample=False, eos_token_id=1,
                               pad_token_id=2)[0, len(ids):].tolist()
            expected.append(out[: out.index(1)] if 1 in out else out)
        for dtype in (torch.float32, torch.bfloat16):
            eager = LLM(path, dtype=dtype, device="cuda", max_num_seqs=8, enforce_eager=True)
            b = [o.token_ids for o in eager.generate(prompts, params)]
            for triton_ops in ("1", "0"):  # the step with tunelab's Triton operators, and with torch's own
                os.environ["TUNELAB_TRITON"] = triton_ops
                graphed = LLM(path, dtype=dtype, device="cuda", max_num_seqs=8)
                ops = "Triton operators" if graphed.runner.decode_op is not None else "torch operators"
                a = [o.token_ids for o in graphed.generate(prompts, params)]
                graphs = graphed.runner.graphs
                same = sum(x == y for x, y in zip(a, b))
                vs_hf = sum(x == y for x, y in zip(a, expected))
                print(f"{dtype}, {ops}: CUDA graphs {graphs.replays} replays ({graphs.padding} padding rows, buckets "
                      f"{sorted(graphs.graphs)}, failure {graphs.failure}); graphs == eager for {same}/8 requests, "
                      f"== transformers fp32 for {vs_hf}/8")
                if graphs.replays == 0 or graphs.padding == 0:
                    failures.append(f"{dtype}, {ops}: no padded graph replay")
                if dtype == torch.float32 and vs_hf < 8:
                    failures.append(f"{dtype}, {ops}: graphed greedy output differs from transformers")
                if triton_ops == "1" and graphed.runner.decode_op is None:
                    failures.append("the Triton operators were not used on a GPU")
                del graphed
            os.environ.pop("TUNELAB_TRITON")
            del eager
    x = torch.randn(64, 2048, device="cuda", dtype=torch.bfloat16) * 3
    norm = RMSNorm(2048, 1e-5).to("cuda", torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(2048) + 0.5)
        xf = x.float()
        llama = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
        ours = norm(x)
    gap = ((ours.float() - llama.float()).abs() / llama.float().abs().clamp_min(1e-3)).max().item()
    print(f"RMSNorm bf16 on CUDA vs Llama's form: max relative gap {gap:.2e} (bf16 rounding: 2 ulp = {2**-7:.2e})")
    if gap > 2**-7:
        failures.append("RMSNorm differs from Llama's form by more than bf16 rounding")
    for f in failures:
        print("FAILED:", f)
    return 1 if failures else 0


def profile(path: str) -> None:
    """A batch-1 decode step of the model at `path` in bf16, graphed, with tunelab's Triton operators and without:
    kernels and GPU time per step by kind, and the wall time of a whole engine step (host work included)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tunelab.engine.bench import _bytes_read_per_token, measure_bandwidth

    roof = None
    for triton_ops in ("1", "0"):
        os.environ["TUNELAB_TRITON"] = triton_ops
        llm = LLM(path, dtype=torch.bfloat16, device="cuda", max_num_seqs=4)
        if roof is None:
            roof = _bytes_read_per_token(llm.model) / measure_bandwidth("cuda", 1024) * 1e3
        ops = "Triton operators" if llm.runner.decode_op is not None else "torch operators"
        seq = llm.make_sequence(list(range(3, 73)), SamplingParams(max_tokens=400, ignore_eos=True))
        llm.add_sequence(seq)
        for _ in range(20):  # prefill, then decode steps: the batch-1 graph is captured
            llm.step()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                llm.step()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        kinds = {"products": [], "attention": [], "other": []}
        for e in kernels:
            name = e.name.lower()
            if any(k in name for k in ("fmha", "flash", "attention", "sdpa")):
                kinds["attention"].append(e)
            elif any(k in name for k in ("gemm", "gemv", "nvjet", "cutlass", "splitk")):
                kinds["products"].append(e)
            else:
                kinds["other"].append(e)
        per_step = sum(e.device_time for e in kernels) / 10 / 1e3
        parts = ", ".join(f"{k} {sum(e.device_time for e in v) / 10 / 1e3:.3f} ms ({len(v) / 10:.0f})"
                          for k, v in kinds.items())
        mm = sum(e.device_time for e in kinds["products"]) / 10 / 1e3
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(100):
            llm.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / 100 * 1e3
        print(f"[{ops}] batch-1 decode step, graphed: {len(kernels) / 10:.0f} kernels, {per_step:.3f} ms of GPU time "
              f"({parts}); bandwidth roofline {roof:.3f} ms/token: the products alone reach {roof / max(mm, 1e-9):.0%}"
              f" of it, the step's GPU time {roof / max(per_step, 1e-9):.0%}; a whole engine step (host work too) "
              f"{wall:.3f} ms = {1e3 / wall:.0f} tok/s = {roof / wall:.0%} of the roofline")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
        llm.abort(seq.request_id)
        del llm
    os.environ.pop("TUNELAB_TRITON")


def gemv() -> None:
    """Batch-1 products of a TinyLlama-1.1B-shaped model's weights (22 layers: q/k/v, o, gate/up, down; then the
    head), as one graph: cuBLAS (`F.linear`, what the engine calls) against a plain Triton matrix-vector kernel
    tuned per shape, in GB/s of weights read. Whether tunelab should carry its own batch-1 product on GPUs."""
    import triton
    import triton.language as tl

    @triton.autotune(configs=[triton.Config({"BN": bn, "BK": bk}, num_warps=w, num_stages=st)
                              for bn, bk, w, st in ((4, 512, 4, 4), (8, 512, 4, 4), (16, 256, 4, 4), (16, 512, 8, 3),
                                                    (32, 256, 8, 3), (8, 1024, 8, 3))], key=["N", "K"])
    @triton.jit
    def matvec(x, w, y, N, K, BN: tl.constexpr, BK: tl.constexpr):
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        acc = tl.zeros([BN, BK], dtype=tl.float32)
        for k0 in range(0, K, BK):
            kk = k0 + tl.arange(0, BK)
            xv = tl.load(x + kk, mask=kk < K, other=0.0).to(tl.float32)
            wv = tl.load(w + n[:, None] * K + kk[None, :], mask=(n[:, None] < N) & (kk[None, :] < K),
                         other=0.0).to(tl.float32)
            acc += wv * xv[None, :]
        tl.store(y + n, tl.sum(acc, axis=1).to(tl.bfloat16), mask=n < N)

    def triton_linear(x, w):
        y = torch.empty(1, w.shape[0], dtype=x.dtype, device=x.device)
        matvec[lambda meta: (triton.cdiv(w.shape[0], meta["BN"]),)](x, w, y, w.shape[0], w.shape[1])
        return y

    shapes = [(2560, 2048), (2048, 2048), (11264, 2048), (2048, 5632)]
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(22) for n, k in shapes]
    weights.append(torch.randn(32000, 2048, device="cuda", dtype=torch.bfloat16) / 2048**0.5)
    xs = {k: torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for k in (2048, 5632)}
    total = sum(w.numel() * 2 for w in weights)
    for n, k in shapes + [(32000, 2048)]:  # correctness and tuning, outside the graph
        w = next(w for w in weights if w.shape == (n, k))
        gap = (triton_linear(xs[k], w).float() - F.linear(xs[k], w).float()).abs().max().item()
        print(f"  [{n} x {k}] Triton vs cuBLAS max abs gap {gap:.3g}; best config {matvec.best_config}")
    for name, fn in (("cuBLAS F.linear", F.linear), ("Triton matvec", triton_linear)):
        def step():
            return [fn(xs[w.shape[1]], w) for w in weights]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / 20
        print(f"{name}: {len(weights)} products, {total / 1e9:.2f} GB of weights, {ms:.3f} ms a step = "
              f"{total / ms / 1e6:.0f} GB/s")
        per_shape = []
        for n, k in shapes:
            w = [w for w in weights if w.shape == (n, k)]
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for m in w:
                    fn(xs[k], m)
            g.replay()
            start.record()
            for _ in range(20):
                g.replay()
            end.record()
            torch.cuda.synchronize()
            t = start.elapsed_time(end) / 20 / len(w)
            per_shape.append(f"[{n}x{k}] {t * 1e3:.1f} us {n * k * 2 / t / 1e6:.0f} GB/s")
        print("   ", "; ".join(per_shape))


def stall(path: str) -> None:
    """The stall on a GPU, step by step: 4 streams decoding while a 2,000-token prompt is admitted in chunks. Each
    step's tokens, whether it replayed a graph, its time; then a profile of two steps that carry a chunk."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tunelab.engine.bench import measure_stall

    llm = LLM(path, dtype=torch.bfloat16, device="cuda", max_num_seqs=8, max_model_len=2400)
    runner, log = llm.runner, []
    plain_run = runner.run

    def logged(seqs, num_tokens=None):
        tokens = sum(s.num_scheduled for s in seqs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        replays, buffer = runner.graphs.replays, runner.slots.k
        out = plain_run(seqs, num_tokens)
        torch.cuda.synchronize()
        log.append((tokens, len(seqs), runner.graphs.replays > replays, runner.slots.k is not buffer,
                    1e3 * (time.perf_counter() - start)))
        return out

    runner.run = logged
    print("stall:", measure_stall(llm))
    mixed = [e for e in log if not e[2]]
    print(f"{len(log)} steps, {len(mixed)} without a graph; reallocations of the dense rows: {sum(e[3] for e in log)}")
    print("  the last steps (sequences/tokens/graph or eager: ms):", "; ".join(
        f"{rows}/{tokens}/{'g' if graphed else 'e'}{'+grew' if grew else ''}: {ms:.1f}"
        for tokens, rows, graphed, grew, ms in log[-len(mixed) - 6:]))
    runner.run = plain_run
    gen = torch.Generator().manual_seed(1)
    seqs = [llm.make_sequence(torch.randint(3, 32000, (n,), generator=gen).tolist(),
                              SamplingParams(max_tokens=300, ignore_eos=True)) for n in (16, 16, 16, 16, 1500)]
    for seq in seqs[:4]:
        llm.add_sequence(seq)
    for _ in range(6):
        llm.step()
    llm.add_sequence(seqs[4])
    llm.step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            llm.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stall"]:
        sys.exit(stall(sys.argv[2]))
    if sys.argv[1:2] == ["--profile"]:
        sys.exit(profile(sys.argv[2]))
    sys.exit(gemv() if sys.argv[1:2] == ["--gemv"] else main())
