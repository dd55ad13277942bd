"""`tunelab generate` and `tunelab info`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("info")(info_command)


def generate_command(
    model: str = typer.Option(..., "--model", help="Checkpoint directory (or hub id)."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt text."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0),
    top_k: int = typer.Option(0, "--top-k", min=0),
    seed: int | None = typer.Option(None, "--seed"),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt as a user message in the chat template."),
    adapter: Path | None = typer.Option(None, "--adapter", help="LoRA adapter directory (PEFT format)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: as stored)."),
) -> None:
    """Generate text from a prompt with a KV cache."""
    from tunelab.lora import LoraError
    from tunelab.models import ModelError, generate, load_pretrained

    try:
        m, tok = load_pretrained(model, dtype=dtype)
        if adapter is not None:
            from tunelab.lora import load_adapter

            load_adapter(m, adapter)
        text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
        ids = tok.encode(text, add_special_tokens=not chat)
        out = generate(m, tok, ids, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                       seed=seed, stop=stop)
    except (ModelError, LoraError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(out.text)
    console.print(
        f"[dim]{out.prompt_tokens} prompt + {out.completion_tokens} completion tokens, "
        f"finish_reason={out.finish_reason}[/dim]",
        highlight=False,
    )


def info_command(path: str = typer.Argument(..., help="Checkpoint directory (or hub id).")) -> None:
    """Family, parameter count, memory in each dtype, context length."""
    from tunelab.models import ModelConfig, ModelError
    from tunelab.models.checkpoint import resolve_checkpoint
    from tunelab.models.info import describe

    try:
        cfg = ModelConfig.from_file(resolve_checkpoint(path) / "config.json")
    except ModelError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    d = describe(cfg)
    table = Table(title=str(path), show_header=False)
    for key, value in d.items():
        table.add_row(key, str(value))
    console.print(table)
