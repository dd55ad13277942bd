"""The LoRA fine-tuning loop, top to bottom in one pass.

load model -> inject LoRA -> tokenise data -> AdamW over the adapter only ->
for each step: accumulate micro-batches (loss normalised by the target tokens of
the whole global batch, so accumulation and data parallelism give the same update
as one big batch) -> clip -> step -> schedule -> log -> checkpoint -> evaluate.

Runs as is on one CPU or GPU, and under `torchrun --nproc-per-node N` with
DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from tunelab.lora import LoraConfig, inject, save_adapter, trainable_parameters
from tunelab.models import load_pretrained
from tunelab.train.checkpoints import latest_checkpoint, restore_checkpoint, save_checkpoint
from tunelab.train.config import TrainError, TuneConfig
from tunelab.train.data import Batches, collate, load_examples, split_validation
from tunelab.train.loss import chunked_cross_entropy


@dataclass
class TuneResult:
    out: Path
    steps: int
    trainable: int
    total: int
    tokens_seen: int
    wall_s: float
    peak_memory_bytes: int
    train_loss: float | None
    val_loss: float | None
    # Rows trained on and held out: `val_fraction` takes its rows from --data, so the two are
    # reported apart rather than as one "rows" figure that hides the split.
    train_rows: int = 0
    val_rows: int = 0


def tune(config: TuneConfig, progress: bool = True, console=None) -> TuneResult:
    rank, world, device = _setup_distributed(config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out = Path(config.out)
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = _adapted_model(config, device)
    data = _data(config, tokenizer, rank, world)
    params, optimizer, scheduler = _optimizer(model, config, data.total_steps)

    step = 0
    if config.resume:
        found = latest_checkpoint(out)
        if found is not None:
            step = restore_checkpoint(found, model, optimizer, scheduler, data.batches)
            _log(main, console, f"resumed from {found} (step {step})")

    runner = _LossModule(model, config.loss_chunk)
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    log_path = out / "train_log.jsonl"
    tokens_seen, t_start, last_loss, val_loss = 0, time.perf_counter(), None, None
    bar = _progress(main and progress, data.total_steps, step, console)
    try:
        while step < data.total_steps:
            t0 = time.perf_counter()
            micro = [_to(data.batches.next(), device) for _ in range(config.grad_accum)]
            loss, n_tokens = _accumulate(runner, micro, world, device, autocast)
            if not math.isfinite(loss):
                good = latest_checkpoint(out)
                raise TrainError(
                    f"loss is {loss} at step {step + 1}; stopped without applying that update. "
                    f"Last good checkpoint: {good or 'none (set --save-every)'}. Lower --lr or check the data."
                )
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += n_tokens
            last_loss = loss
            dt = time.perf_counter() - t0
            record = {"step": step, "loss": round(loss, 6), "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": round(n_tokens / dt, 1), "peak_memory_mb": round(_peak_memory(device) / 2**20, 1)}  # fmt: skip
            if config.eval_every and data.val_set and (step % config.eval_every == 0 or step == data.total_steps):
                val_loss = evaluate(model, data.val_set, config, data.pad_id, device)
                record["val_loss"] = round(val_loss, 6)
            if main:
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            bar.update(step, loss, record["tokens_per_s"])
            if config.save_every and step % config.save_every == 0 and main:
                save_checkpoint(out, step, model, optimizer, scheduler, data.batches)
            if config.stop_after and step >= config.stop_after:
                break
    finally:
        bar.close()
    if data.val_set and val_loss is None:
        val_loss = evaluate(model, data.val_set, config, data.pad_id, device)
    counts = trainable_parameters(model)
    result = TuneResult(out, step, counts.trainable, counts.total, tokens_seen, time.perf_counter() - t_start,
                        _peak_memory(device), last_loss, val_loss, data.train_rows, len(data.val_set))  # fmt: skip
    if main:
        _write_outputs(model, result, data.stats, counts)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _adapted_model(config: TuneConfig, device):
    """The model with a fresh adapter. W0 stays frozen; only A and B (and nothing else) train."""
    model, tokenizer = load_pretrained(config.model, dtype=config.dtype, device=device)
    lora = LoraConfig(r=config.rank, alpha=config.alpha, dropout=config.dropout, target_modules=config.targets,
                      base_model_name_or_path=str(config.model))  # fmt: skip
    inject(model, lora)
    model.gradient_checkpointing = config.gradient_checkpointing
    model.train()
    return model, tokenizer


@dataclass
class _Data:
    batches: Batches
    train_rows: int
    val_set: list
    stats: object
    pad_id: int
    total_steps: int


def _data(config: TuneConfig, tokenizer, rank: int, world: int) -> _Data:
    """Training batches and the validation set, validated in full before the first step."""
    examples, stats = load_examples(config.data, tokenizer, config.max_seq_len, config.overflow)
    if config.val:
        train_set, (val_set, _) = examples, load_examples(config.val, tokenizer, config.max_seq_len, config.overflow)
    else:
        train_set, val_set = split_validation(examples, config.val_fraction, config.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = Batches(train_set, config.batch_size, config.seed, pad_id, config.packing, config.max_seq_len, rank, world)
    total_steps = config.steps or max(1, math.ceil((config.epochs or 1) * batches.per_epoch / config.grad_accum))
    return _Data(batches, len(train_set), val_set, stats, pad_id, total_steps)


def _optimizer(model, config: TuneConfig, total_steps: int):
    """AdamW over the trainable parameters (no weight decay on vectors) and the warmup/decay schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))
    return params, optimizer, scheduler


def _accumulate(runner, micro: list[dict], world: int, device, autocast) -> tuple[float, int]:
    """Gradients of one optimizer step over its micro-batches (and ranks), as one big batch would give them:
    (the step's loss per target token, the tokens it saw)."""
    targets = torch.tensor(float(sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)), device=device)
    n_tokens = torch.tensor(float(sum(m["input_ids"].numel() for m in micro)), device=device)
    if world > 1:
        dist.all_reduce(targets)
        dist.all_reduce(n_tokens)
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(micro):
        sync = contextlib.nullcontext() if (world == 1 or i == len(micro) - 1) else runner.no_sync()
        with sync, autocast:
            total, _ = runner(batch)
            # DDP averages gradients over ranks; scale so the result is sum / global targets.
            (total * world / targets.clamp(min=1)).backward()
        loss_sum += total.detach()
    if world > 1:
        dist.all_reduce(loss_sum)
    return float(loss_sum / targets.clamp(min=1)), int(n_tokens)


def _write_outputs(model, result: TuneResult, stats, counts) -> None:
    save_adapter(model, result.out)
    summary = {**result.__dict__, "out": str(result.out), "rows_read": stats.rows, "truncated": stats.truncated,
               "dropped": stats.dropped, "trainable_percent": 100 * counts.trainable / counts.total}  # fmt: skip
    (result.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


@torch.no_grad()
def evaluate(model, examples, config: TuneConfig, pad_id: int, device) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), config.batch_size):
        batch = _to(collate([(e, None) for e in examples[i : i + config.batch_size]], pad_id), device)
        hidden = model.hidden_states(batch["input_ids"])
        s, n = chunked_cross_entropy(hidden, batch["labels"], model.lm_head, config.loss_chunk)
        total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


class _LossModule(nn.Module):
    """The model and its loss as one module, so DistributedDataParallel wraps both."""

    def __init__(self, model, chunk):
        super().__init__()
        self.model, self.chunk = model, chunk

    def forward(self, batch):
        hidden = self.model.hidden_states(
            batch["input_ids"], position_ids=batch.get("position_ids"), attn_mask=batch.get("attn_mask")
        )
        return chunked_cross_entropy(hidden, batch["labels"], self.model.lm_head, self.chunk)


def _schedule(config: TuneConfig, total_steps: int):
    warmup = config.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _setup_distributed(config: TuneConfig):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if config.device:
        device = torch.device(config.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    return rank, world, device


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def _peak_memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _log(main, console, message):
    if main and console is not None:
        console.print(message)


class _progress:
    """A rich progress bar (step, loss, tokens/s, ETA), or nothing."""

    def __init__(self, enabled, total, start, console):
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                                TimeRemainingColumn(), console=console, transient=False)  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("tune", total=total, completed=start, loss="-", tps="-")

    def update(self, step, loss, tps):
        if self.bar:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tps:,.0f}")

    def close(self):
        if self.bar:
            self.bar.stop()
