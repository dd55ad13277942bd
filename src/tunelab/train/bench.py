"""`tunelab bench train`: tunelab's training step vs transformers + peft, side by side.

Same random Llama-style model (saved once in HF layout and loaded by both), same
batch, same LoRA (r=8 on q_proj and v_proj), same AdamW settings.

- Step time: both trainers in one process, alternating step by step, so that the
  load of a shared machine hits both alike; the ratio is the median of per-pair ratios.
- Memory: each side alone in a fresh process, peak resident memory above the loaded
  model, with glibc returning large freed blocks to the OS (identically for both) so
  that peak RSS tracks live tensors rather than the allocator's history.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = "transformers + peft"


def run_bench(steps=6, warmup=1, layers=8, hidden=512, seq=256, batch=4, device="cpu", dtype="float32", console=None):
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        n_params = _make_model(path, layers, hidden)
        console.print(f"model: Llama-style, {layers} layers, hidden {hidden}, vocab 32000, {n_params / 1e6:.1f}M "
                      f"parameters; batch {batch} x {seq} tokens; LoRA r=8 on q_proj, v_proj; {dtype} on {device}")  # fmt: skip
        timing = _run_side("paired", path, steps, warmup, seq, batch, device, dtype)
        memory = {side: _run_side(side, path, 1, 1, seq, batch, device, dtype, memory=True) for side in SIDES}
    ratio = statistics.median(a / b for a, b in zip(timing["tunelab"], timing[REFERENCE]))
    mem = {side: (m["train_bytes"] / 2**20, m["peak_bytes"] / 2**20) for side, m in memory.items()}
    table = Table(title="tunelab bench train")
    for col in ("", "step time (median)", "peak memory above model", "peak memory (process)", "loss after 1 step"):
        table.add_column(col, justify="right")
    for side in SIDES:
        table.add_row(side, f"{statistics.median(timing[side]):.3f} s", f"{mem[side][0]:.0f} MiB",
                      f"{mem[side][1]:.0f} MiB", f"{memory[side]['loss']:.4f}")  # fmt: skip
    summary = {
        "step_time_ratio": ratio,
        "train_memory_ratio": mem["tunelab"][0] / mem[REFERENCE][0],
        "process_memory_ratio": mem["tunelab"][1] / mem[REFERENCE][1],
        "step_s": {side: statistics.median(timing[side]) for side in SIDES},
        "memory_mb": mem,
        "loss": {side: memory[side]["loss"] for side in SIDES},
    }
    table.add_row("ratio (tunelab / reference)", f"{ratio:.2f}x (paired)", f"{summary['train_memory_ratio']:.2f}x",
                  f"{summary['process_memory_ratio']:.2f}x", "")  # fmt: skip
    console.print(table)
    console.print("[dim]targets: <= 0.8x step time, <= 0.6x peak memory (acceptance: <= 1.0x, <= 0.8x). "
                  "Step times: both trainers in one process, alternating step by step; the ratio is the median of "
                  "per-pair ratios.[/dim]")  # fmt: skip
    return summary


SIDES = ("tunelab", REFERENCE)


def _make_model(path: Path, layers: int, hidden: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text("{}")
    return sum(p.numel() for p in model.parameters())


def _run_side(side, path, steps, warmup, seq, batch, device, dtype, memory=False):
    cmd = [sys.executable, "-m", "tunelab.train.bench", side, str(path), str(steps), str(warmup), str(seq), str(batch),
           device, dtype]  # fmt: skip
    # Large blocks straight from mmap and back to the OS when freed, for both sides: otherwise
    # glibc keeps freed heap and peak RSS measures the allocator's history, not live tensors.
    # Timing runs use the allocator as users have it; memory runs are separate.
    env = dict(os.environ)
    if memory and device == "cpu":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"bench side {side!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- one side, in its own process
def _setup(side, path, device, dtype, ids):
    """Load one side's model with LoRA; return (model, one_step)."""
    import torch

    torch.manual_seed(0)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if side == "tunelab":
        from tunelab.lora import LoraConfig, inject
        from tunelab.models import load_pretrained
        from tunelab.train.trainer import _LossModule

        model, _ = load_pretrained(path, device=device, dtype=dt)
        inject(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
        runner = _LossModule(model, None)

        def loss_fn():
            total, n = runner({"input_ids": ids, "labels": ids})
            return total / n
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(device)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))

        def loss_fn():
            return model(input_ids=ids, labels=ids).loss

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    def step():
        if autocast:
            with autocast:
                loss = loss_fn()
        else:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    return model, step


def _measure(side, path, steps, warmup, seq, batch, device, dtype):
    import torch

    dev = torch.device(device)
    ids = torch.randint(0, 32000, (batch, seq), generator=torch.Generator().manual_seed(1)).to(dev)
    if side == "paired":
        # Both trainers in one process, alternating step by step (order swapped every
        # step), so background load on a shared machine hits both alike.
        sides = {name: _setup(name, path, dev, dtype, ids)[1] for name in SIDES}
        times = {name: [] for name in SIDES}
        for i in range(warmup + steps):
            order = SIDES if i % 2 == 0 else SIDES[::-1]
            for name in order:
                t0 = time.perf_counter()
                sides[name]()
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
        return times
    _, step = _setup(side, path, dev, dtype, ids)
    base = _memory(dev)
    _reset_peak(dev)
    loss = None
    for _ in range(warmup + steps):
        loss = step()
    return {"train_bytes": _peak(dev) - base, "peak_bytes": _peak(dev), "loss": loss}


def _memory(dev):
    import torch

    if dev.type == "cuda":
        return torch.cuda.memory_allocated(dev)
    # Current resident set size, from /proc (Linux).
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM), so loading the
        # model (which may briefly hold two copies) does not count as training memory.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _peak(dev):
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    side, path, steps, warmup, seq, batch, device, dtype = sys.argv[1:9]
    print(json.dumps(_measure(side, Path(path), int(steps), int(warmup), int(seq), int(batch), device, dtype)))
