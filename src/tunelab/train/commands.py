"""`tunelab tune` and `tunelab bench train`."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("tune")(tune_command)
    bench.command("train")(bench_train_command)


def tune_command(
    config: Path | None = typer.Argument(None, help="YAML file of settings; every flag below overrides it."),
    model: str | None = typer.Option(None, "--model", help="Base model: built-in name, .gguf file or checkpoint directory."),
    data: str | None = typer.Option(None, "--data", help="Training JSONL (prompt/completion or messages rows)."),
    val: str | None = typer.Option(None, "--val", help="Validation JSONL."),
    val_fraction: float | None = typer.Option(None, "--val-fraction", help="Hold out this fraction of --data."),
    out: str | None = typer.Option(None, "--out", help="Output directory (adapter, logs, checkpoints)."),
    steps: int | None = typer.Option(None, "--steps"),
    epochs: float | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    grad_accum: int | None = typer.Option(None, "--grad-accum"),
    lr: float | None = typer.Option(None, "--lr"),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps"),
    schedule: str | None = typer.Option(None, "--schedule", help="cosine | linear | constant"),
    weight_decay: float | None = typer.Option(None, "--weight-decay"),
    max_seq_len: int | None = typer.Option(None, "--max-seq-len"),
    overflow: str | None = typer.Option(None, "--overflow", help="truncate | drop rows longer than --max-seq-len"),
    packing: bool | None = typer.Option(None, "--packing/--no-packing"),
    rank: int | None = typer.Option(None, "--rank"),
    alpha: float | None = typer.Option(None, "--alpha"),
    dropout: float | None = typer.Option(None, "--dropout"),
    targets: str | None = typer.Option(None, "--targets", help="Comma-separated module names, a regex, or all-linear."),
    seed: int | None = typer.Option(None, "--seed"),
    save_every: int | None = typer.Option(None, "--save-every"),
    eval_every: int | None = typer.Option(None, "--eval-every"),
    resume: bool | None = typer.Option(None, "--resume/--no-resume", help="Continue from the latest checkpoint."),
    stop_after: int | None = typer.Option(None, "--stop-after", help="Stop after N steps, keeping the schedule."),
    gradient_checkpointing: bool | None = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    dtype: str | None = typer.Option(None, "--dtype"),
    device: str | None = typer.Option(None, "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Fine-tune a LoRA adapter on a JSONL file (loss on completion tokens only)."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "progress")}
    from tunelab.lora import LoraError
    from tunelab.models import ModelError
    from tunelab.train import TrainError, TuneConfig, tune

    try:
        cfg = TuneConfig.load(config, overrides)
        result = tune(cfg, progress=progress, console=console)
    except (TrainError, ModelError, LoraError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports for everyone
    table = Table(title="tunelab tune", show_header=False)
    table.add_row("adapter", str(result.out))
    table.add_row("steps", str(result.steps))
    table.add_row("rows", f"{result.train_rows} train, {result.val_rows} validation")
    table.add_row("trainable parameters", f"{result.trainable:,} of {result.total:,} ({100 * result.trainable / result.total:.4f}%)")
    table.add_row("tokens seen", f"{result.tokens_seen:,}")
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    table.add_row("peak memory", f"{result.peak_memory_bytes / 2**20:,.0f} MiB")
    table.add_row("final train loss", f"{result.train_loss:.4f}" if result.train_loss is not None else "-")
    table.add_row("final val loss", f"{result.val_loss:.4f}" if result.val_loss is not None else "-")
    console.print(table)


def bench_train_command(
    steps: int = typer.Option(6, "--steps", help="Measured steps per side (after warm-up)."),
    warmup: int = typer.Option(1, "--warmup"),
    layers: int = typer.Option(8, "--layers"),
    hidden: int = typer.Option(512, "--hidden"),
    seq: int = typer.Option(256, "--seq"),
    batch: int = typer.Option(4, "--batch"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 (bf16 autocast on GPU)."),
) -> None:
    """tunelab's trainer vs transformers + peft, same model, data, seeds: step-time and memory ratios."""
    from tunelab.train.bench import run_bench

    run_bench(steps=steps, warmup=warmup, layers=layers, hidden=hidden, seq=seq, batch=batch,
              device=device, dtype=dtype, console=console)
