"""`tunelab bench generate`: tunelab's engine side by side with transformers' `generate`, in one run.

Both load the same random Llama-style checkpoint (8 layers, hidden 512, 8 heads, vocab 32000: ~60M parameters)
written to a temporary directory, in the same dtype, on the same device. Reported:
  - batch 1: decode tokens/s of each and their ratio, with the memory-bandwidth roofline (every weight but the
    embedding table is read once per token; bandwidth measured with a large tensor copy) and the fraction reached;
  - N concurrent requests (P prompt tokens, T new tokens each): tunelab's aggregate tokens/s with all requests
    submitted at once vs transformers generating them one after another.
transformers is a benchmark oracle here: imported lazily, never by the engine itself.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class BenchResult:
    device: str
    dtype: str
    params_millions: float
    threads: int
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def run_generate_bench(requests: int = 32, prompt_tokens: int = 128, new_tokens: int = 128, single_tokens: int = 128,
                       device: str = "cpu", dtype: str = "float32", layers: int = 8, hidden: int = 512,
                       seed: int = 0, bandwidth_mbytes: int = 512, log=print) -> BenchResult:
    from transformers import AutoModelForCausalLM

    from tunelab.engine import LLM, SamplingParams

    torch_dtype = getattr(torch, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_llama(Path(tmp), layers=layers, hidden=hidden, seed=seed)
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        llm = LLM(path, dtype=torch_dtype, device=device, max_num_seqs=max(requests, 1),
                  max_model_len=prompt_tokens + max(new_tokens, single_tokens) + 8)
    gen = torch.Generator().manual_seed(seed)
    vocab = llm.model.config.vocab_size
    prompts = [torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist() for _ in range(requests)]
    short = prompts[0][:16]

    bandwidth = measure_bandwidth(device, bandwidth_mbytes)
    weights = sum(p.numel() * p.element_size() for n, p in llm.model.named_parameters() if "embed_tokens" not in n)
    if llm.model.config.tie_word_embeddings:
        weights += llm.model.lm_head.weight.numel() * llm.model.lm_head.weight.element_size()
    roofline = bandwidth / weights
    log(f"model: {llm.model.num_parameters() / 1e6:.1f}M parameters, {dtype}, {device}, "
        f"{torch.get_num_threads()} threads; copy bandwidth {bandwidth / 1e9:.1f} GB/s")

    def hf(ids, n):
        x = torch.tensor([ids], device=device)
        with torch.inference_mode():
            ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=1)

    def ours(batch, n):
        llm.generate(batch, SamplingParams(max_tokens=n, ignore_eos=True))

    hf(short, 4)
    ours([short], 4)  # warm-up: first-call allocations and kernel selection
    hf_b1 = single_tokens / _timed(lambda: hf(short, single_tokens))
    ours_b1 = single_tokens / _timed(lambda: ours([short], single_tokens))
    log(f"batch 1: transformers {hf_b1:.1f} tok/s, tunelab {ours_b1:.1f} tok/s ({ours_b1 / hf_b1:.2f}x); "
        f"roofline {roofline:.1f} tok/s, reached {ours_b1 / roofline:.0%}")

    hf_seq_s = _timed(lambda: [hf(p, new_tokens) for p in prompts])
    ours_s = _timed(lambda: ours(prompts, new_tokens))
    total = requests * new_tokens
    log(f"{requests} concurrent: transformers one by one {total / hf_seq_s:.1f} tok/s ({hf_seq_s:.1f}s), "
        f"tunelab {total / ours_s:.1f} tok/s ({ours_s:.1f}s): {hf_seq_s / ours_s:.1f}x")
    return BenchResult(
        device=device, dtype=dtype, params_millions=round(llm.model.num_parameters() / 1e6, 1),
        threads=torch.get_num_threads(), bandwidth_gbs=round(bandwidth / 1e9, 2),
        bytes_per_token_mb=round(weights / 1e6, 1), roofline_tok_s=round(roofline, 1),
        hf_b1_tok_s=round(hf_b1, 1), ours_b1_tok_s=round(ours_b1, 1), b1_ratio=round(ours_b1 / hf_b1, 2),
        b1_roofline_fraction=round(ours_b1 / roofline, 3), requests=requests, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, hf_sequential_tok_s=round(total / hf_seq_s, 1),
        ours_concurrent_tok_s=round(total / ours_s, 1), concurrent_ratio=round(hf_seq_s / ours_s, 2),
        hf_sequential_s=round(hf_seq_s, 2), ours_concurrent_s=round(ours_s, 2),
    )


def write_random_llama(path: Path, layers: int = 8, hidden: int = 512, seed: int = 0) -> Path:
    """A random Llama-style checkpoint with a word-level tokenizer (the bench feeds token ids)."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
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


def _timed(fn, device: str = "cpu") -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start
