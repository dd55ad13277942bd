"""GPU checks of the engine, for a machine with CUDA (CI has none; the CPU suite runs the graphed decode step
eagerly, tests/engine/test_decode_graphs.py): decode steps replayed as CUDA graphs give the tokens that the eager
engine and transformers give, and the GPU RMSNorm kernel matches Llama's form to bf16 rounding. With --profile,
where a batch-1 decode step's GPU time goes on a random TinyLlama-1.1B-shaped model in bf16 (kernels per step, the
matrix products' share), which explains how far batch 1 is from the bandwidth roofline.
Run by scripts/gpu-check.sh."""

import sys
import tempfile
from pathlib import Path

import torch

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
            graphed = LLM(path, dtype=dtype, device="cuda", max_num_seqs=8)
            eager = LLM(path, dtype=dtype, device="cuda", max_num_seqs=8, enforce_eager=True)
            a = [o.token_ids for o in graphed.generate(prompts, params)]
            b = [o.token_ids for o in eager.generate(prompts, params)]
            graphs = graphed.runner.graphs
            same = sum(x == y for x, y in zip(a, b))
            vs_hf = sum(x == y for x, y in zip(a, expected))
            print(f"{dtype}: CUDA graphs {graphs.replays} replays ({graphs.padding} padding rows, buckets "
                  f"{sorted(graphs.graphs)}); graphs == eager for {same}/8 requests, == transformers fp32 for "
                  f"{vs_hf}/8")
            if graphs.replays == 0 or graphs.padding == 0:
                failures.append(f"{dtype}: no padded graph replay")
            if dtype == torch.float32 and (same < 8 or vs_hf < 8):
                failures.append(f"{dtype}: graphed greedy output differs")
            del graphed, eager
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
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tunelab.engine.bench import _bytes_read_per_token, measure_bandwidth

    llm = LLM(path, dtype=torch.bfloat16, device="cuda", max_num_seqs=4)
    seq = llm.make_sequence(list(range(3, 73)), SamplingParams(max_tokens=200, ignore_eos=True))
    llm.add_sequence(seq)
    for _ in range(20):  # prefill, then decode steps: the batch-1 graph is captured
        llm.step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            llm.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    matmul = [e for e in kernels if any(k in e.name.lower() for k in ("gemm", "gemv", "nvjet", "cutlass", "splitk"))]
    per_step = sum(e.device_time for e in kernels) / 10 / 1e3
    mm = sum(e.device_time for e in matmul) / 10 / 1e3
    roof = _bytes_read_per_token(llm.model) / measure_bandwidth("cuda", 1024) * 1e3
    print(f"batch-1 decode step, graphed: {len(kernels) / 10:.0f} kernels, {per_step:.3f} ms of GPU time, of which "
          f"matrix products {mm:.3f} ms ({len(matmul) / 10:.0f} kernels); bandwidth roofline {roof:.3f} ms/token: "
          f"the products alone reach {roof / max(mm, 1e-9):.0%} of it, the whole step {roof / max(per_step, 1e-9):.0%}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    llm.abort(seq.request_id)


if __name__ == "__main__":
    sys.exit(profile(sys.argv[2]) if sys.argv[1:2] == ["--profile"] else main())
