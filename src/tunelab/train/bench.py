"""`tunelab bench train`: tunelab's training step vs transformers + peft, side by side.

Same random Llama-style model (saved once in HF layout and loaded by both), same
batch, same LoRA (r=8 on q_proj and v_proj), same AdamW settings. Each side runs in
its own fresh process; the sides alternate over rounds so that machine noise hits
both. Memory comes from one extra run per side in which glibc returns large freed
blocks to the OS (identically for both), so that peak RSS tracks live tensors rather
than the allocator's history; step times come from runs with the default allocator. Reported: median step time after
warm-up and peak memory above the loaded model, as tunelab / reference ratios.
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


def run_bench(steps=4, warmup=1, layers=8, hidden=512, seq=256, batch=4, rounds=2, device="cpu", dtype="float32",
              console=None):  # fmt: skip
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        n_params = _make_model(path, layers, hidden)
        console.print(f"model: Llama-style, {layers} layers, hidden {hidden}, vocab 32000, {n_params / 1e6:.1f}M "
                      f"parameters; batch {batch} x {seq} tokens; LoRA r=8 on q_proj, v_proj; {dtype} on {device}")  # fmt: skip
        results = {"tunelab": [], REFERENCE: []}
        memory = {}
        for _ in range(rounds):
            for side in results:
                results[side].append(_run_side(side, path, steps, warmup, seq, batch, device, dtype))
        for side in results:
            memory[side] = _run_side(side, path, 1, 1, seq, batch, device, dtype, memory=True)
        for side in results:
            for run in results[side]:
                run["train_bytes"], run["peak_bytes"] = memory[side]["train_bytes"], memory[side]["peak_bytes"]
    summary = {side: _summarise(runs) for side, runs in results.items()}
    ours, ref = summary["tunelab"], summary[REFERENCE]
    table = Table(title="tunelab bench train")
    for col in ("", "step time (median)", "peak memory above model", "peak memory (process)", "final loss"):
        table.add_column(col, justify="right")
    for side, s in summary.items():
        table.add_row(side, f"{s['step_s']:.3f} s", f"{s['train_mb']:.0f} MiB", f"{s['peak_mb']:.0f} MiB",
                      f"{s['loss']:.4f}")  # fmt: skip
    table.add_row("ratio (tunelab / reference)", f"{ours['step_s'] / ref['step_s']:.2f}x",
                  f"{ours['train_mb'] / ref['train_mb']:.2f}x", f"{ours['peak_mb'] / ref['peak_mb']:.2f}x", "")  # fmt: skip
    console.print(table)
    console.print("[dim]targets: <= 0.8x step time, <= 0.6x peak memory (acceptance: <= 1.0x, <= 0.8x)[/dim]")
    return summary


def _summarise(runs):
    return {
        "step_s": statistics.median(t for r in runs for t in r["step_s"]),
        "train_mb": statistics.median(r["train_bytes"] for r in runs) / 2**20,
        "peak_mb": statistics.median(r["peak_bytes"] for r in runs) / 2**20,
        "loss": runs[-1]["loss"],
    }


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
def _measure(side, path, steps, warmup, seq, batch, device, dtype):
    import torch

    torch.manual_seed(0)
    dev = torch.device(device)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    ids = torch.randint(0, 32000, (batch, seq), generator=torch.Generator().manual_seed(1)).to(dev)
    if side == "tunelab":
        from tunelab.lora import LoraConfig, inject
        from tunelab.models import load_pretrained
        from tunelab.train.trainer import _LossModule

        model, _ = load_pretrained(path, device=dev, dtype=dt)
        inject(model, LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
        model.train()
        runner = _LossModule(model, None)

        def loss_fn():
            total, n = runner({"input_ids": ids, "labels": ids})
            return total / n
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(dev)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        model.train()

        def loss_fn():
            return model(input_ids=ids, labels=ids).loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    base = _memory(dev)
    _reset_peak(dev)
    times, loss = [], None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        if autocast:
            with autocast:
                loss = loss_fn()
        else:
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = _peak(dev)
    return {"step_s": times, "train_bytes": peak - base, "peak_bytes": peak, "loss": float(loss)}


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
