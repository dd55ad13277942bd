"""`tunelab bench lora`."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("lora")(bench_lora_command)


def bench_lora_command(
    size: str = typer.Option("default", "--size", help="default | tiny (a smoke run)."),
    iters: int = typer.Option(5, "--iters", min=1, help="Timed iterations per candidate (median reported)."),
    warmup: int = typer.Option(2, "--warmup", min=0),
    rank: int = typer.Option(16, "--rank", min=1),
    adapters: int = typer.Option(8, "--adapters", min=1, help="Adapters in the mixed batch."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda if available)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's choice). "
                                       "1 gives steadier figures on a machine shared with other jobs."),
) -> None:
    """LoRA training step vs PEFT (time, memory) and a mixed-adapter batch vs one merged adapter."""
    from tunelab.lora.bench import SIZES, run

    if size not in SIZES:
        console.print(f"[red]error:[/red] --size must be one of {sorted(SIZES)}, got {size!r}")
        raise typer.Exit(2)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    r = run(size=size, iters=iters, warmup=warmup, rank=rank, adapters=adapters, device=device)

    train = Table(title=f"LoRA training step (forward+backward) on {r.device}")
    for col in ("", "tunelab", "PEFT", "tunelab / PEFT"):
        train.add_column(col, justify="right")
    train.add_row("time (ms, median)", f"{r.train_ms['tunelab']:.1f}", f"{r.train_ms['peft']:.1f}",
                  f"{r.train_ratio:.2f}x")
    train.add_row(f"memory (MiB, {r.memory_kind})", f"{r.train_memory_mb['tunelab']:.1f}",
                  f"{r.train_memory_mb['peft']:.1f}",
                  f"{r.train_memory_mb['tunelab'] / r.train_memory_mb['peft']:.2f}x")
    console.print(train)

    mixed = Table(title=f"Mixed-adapter batch ({adapters} adapters, one per row) vs one merged adapter")
    for col in ("", "tokens/s", "vs merged"):
        mixed.add_column(col, justify="right")
    for key, label in (("merged", "one adapter, merged into W"), ("mixed", "tunelab per_row_adapters"),
                       ("mixed_cold", "  same, adapter stacks rebuilt each batch"),
                       ("peft_mixed", "PEFT adapter_names=")):
        mixed.add_row(label, f"{r.infer_tok_s[key]:,.0f}", f"{r.infer_ratio[key]:.2f}x")
    console.print(mixed)
    ratio = r.infer_ratio["mixed"]
    verdict = "[green]meets[/green]" if ratio >= 0.8 else "[red]misses[/red]"
    console.print(f"mixed / merged = {ratio:.2f}x ({verdict} the >= 0.8x target)")
    console.print("[dim]ratios are medians of per-round ratios (candidates run back to back each round)[/dim]")
    for note in r.notes:
        console.print(f"[dim]{note}[/dim]", highlight=False)
