"""`tunelab bench lora`: tunelab.lora side by side with PEFT on the same transformers Llama-style model.

1. Training step (forward + backward, LoRA on all linear layers): median time of tunelab vs PEFT, interleaved so both
   see the same machine state, and memory: on CUDA the peak allocated bytes (torch.cuda.max_memory_allocated); on CPU,
   where torch's allocator has no peak counter, the bytes autograd keeps for backward (tensors saved by the forward,
   deduplicated by storage) plus the trainable parameters' gradients -- the part of a step's memory that LoRA code
   decides; weights are shared and identical for both.
2. Mixed batch: 8 adapters, one per row, in one forward (per_row_adapters) vs the same batch through one adapter
   merged into the weights (the fastest a single adapter can run); PEFT's own mixed batch (`adapter_names=`, a loop
   over sub-batches) is timed too. Target: mixed >= 0.8x merged tokens/s.
PEFT and transformers are imported here only, lazily: they are the reference, not runtime dependencies.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

import torch

from tunelab.lora.config import LoraConfig

SIZES = {
    # hidden, intermediate, layers, heads, vocab, batch, seq
    "default": (512, 1376, 4, 8, 4096, 8, 128),
    "tiny": (64, 128, 2, 4, 256, 8, 16),
}


@dataclass
class BenchResult:
    size: str
    device: str
    params: int
    train_ms: dict[str, float] = field(default_factory=dict)      # tunelab / peft, medians
    train_ratio: float = 0.0                                       # median over rounds of tunelab_i / peft_i
    train_memory_mb: dict[str, float] = field(default_factory=dict)
    memory_kind: str = ""
    infer_tok_s: dict[str, float] = field(default_factory=dict)   # merged / mixed / mixed_cold / peft_mixed
    infer_ratio: dict[str, float] = field(default_factory=dict)   # median over rounds of merged_i / candidate_i
    notes: list[str] = field(default_factory=list)


def run(size: str = "default", iters: int = 5, warmup: int = 2, rank: int = 16, adapters: int = 8,
        device: str | None = None, seed: int = 0) -> BenchResult:
    import transformers

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    hidden, inter, layers, heads, vocab, batch, seq = SIZES[size]
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                   max_position_embeddings=max(seq, 64), tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(cfg).to(device)
    result = BenchResult(size=size, device=device, params=sum(p.numel() for p in base.parameters()))
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    config = LoraConfig(r=rank, alpha=2 * rank, target_modules="all-linear")
    _bench_training(base, ids, config, result, iters, warmup, device)
    _bench_mixed(base, ids, config, result, adapters, iters, warmup, device)
    result.notes.append(f"Llama-style {layers} layers, hidden {hidden}, {result.params / 1e6:.1f}M params, "
                        f"batch {batch} x {seq} tokens, LoRA r={rank} on all linear layers, {adapters} adapters, "
                        f"median of {iters} after {warmup} warm-up, torch threads {torch.get_num_threads()}")
    return result


def _bench_training(base, ids, config: LoraConfig, result: BenchResult, iters: int, warmup: int, device) -> None:
    """One training step (forward, loss, backward) of tunelab's LoRA against PEFT's: time and peak memory."""
    import peft

    from tunelab.lora import inject

    rank = config.r
    ours = inject(copy.deepcopy(base).train(), config)
    theirs = peft.get_peft_model(copy.deepcopy(base).train(),
                                 peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))

    def step(model):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    times = _interleaved({"tunelab": lambda: step(ours), "peft": lambda: step(theirs)}, iters, warmup, device)
    result.train_ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    result.train_ratio = _paired_ratio(times["tunelab"], times["peft"])
    for name, model in (("tunelab", ours), ("peft", theirs)):
        result.train_memory_mb[name], result.memory_kind = _step_memory(model, ids, device)


def _bench_mixed(base, ids, config: LoraConfig, result: BenchResult, adapters: int, iters: int, warmup: int,
                 device) -> None:
    """A batch whose rows use different adapters, against the same batch through one merged adapter and PEFT's
    mixed batch (`adapter_names`)."""
    import peft

    from tunelab.lora import add, inject, merge_and_unload, per_row_adapters, set_active
    from tunelab.lora.injection import lora_layers

    rank, (batch, seq) = config.r, ids.shape
    names = [f"a{i}" for i in range(adapters)]
    rows = [names[i % adapters] for i in range(batch)]
    mixed = copy.deepcopy(base).eval()
    for i, name in enumerate(names):
        (inject if i == 0 else add)(mixed, config, name)
    _randomize(mixed)
    merged = copy.deepcopy(mixed)
    set_active(merged, names[0])
    merge_and_unload(merged)
    theirs = peft.get_peft_model(copy.deepcopy(base).eval(),
                                 peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"),
                                 adapter_name=names[0])
    for name in names[1:]:
        theirs.add_adapter(name, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    _randomize(theirs)
    theirs.eval()

    # per_row_adapters caches the stacked adapter tensors on each layer while the same adapters are mixed (a
    # server's decode steps); "mixed_cold" drops that cache before every batch: a server seeing a new mix each time.
    def mixed_forward():
        with per_row_adapters(mixed, rows):
            mixed(input_ids=ids)

    def mixed_cold():
        for _, layer in lora_layers(mixed):
            layer.clear_mixed_cache()
        mixed_forward()

    with torch.no_grad():
        times = _interleaved({
            "merged": lambda: merged(input_ids=ids),
            "mixed": mixed_forward,
            "mixed_cold": mixed_cold,
            "peft_mixed": lambda: theirs(input_ids=ids, adapter_names=rows),
        }, iters, warmup, device)
    result.infer_tok_s = {k: batch * seq / statistics.median(v) for k, v in times.items()}
    result.infer_ratio = {k: _paired_ratio(times["merged"], v) for k, v in times.items()}


def _interleaved(fns: dict, iters: int, warmup: int, device: str) -> dict[str, list[float]]:
    """Seconds per call, one sample per round. Candidates alternate, in reversed order every other round, so drift
    and load from other processes hit all of them alike."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + iters):
        order = list(fns.items())
        for name, fn in order if i % 2 == 0 else reversed(order):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                samples[name].append(time.perf_counter() - start)
    return samples


def _paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of per-round ratios a_i / b_i: a burst of background load that slows one whole round cancels out,
    which the ratio of two medians does not do on a shared machine."""
    return statistics.median(x / y for x, y in zip(a, b))


def _step_memory(model, ids, device: str) -> tuple[float, str]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        model(input_ids=ids, labels=ids).loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
        model.zero_grad(set_to_none=True)
        return peak / 2**20, "CUDA peak allocated above the weights"
    storages: dict[int, int] = {}

    def pack(t):
        # Parameters saved for backward are weights, not activations; count activations only.
        if not isinstance(t, torch.nn.Parameter):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return (sum(storages.values()) + grads) / 2**20, "saved-for-backward activations + gradients"


def _randomize(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.02)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
