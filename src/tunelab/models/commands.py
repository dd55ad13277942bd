"""`tunelab generate`, `tunelab info`, `tunelab models` and `tunelab convert`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("generate")(generate_command)
    app.command("info")(info_command)
    app.command("models")(models_command)
    app.command("convert")(convert_command)


MODEL_HELP = "Built-in model name (see `tunelab models`), .gguf file, checkpoint directory or hub id."


def generate_command(
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
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
    from tunelab.models.chat import encode_chat

    try:
        m, tok = load_pretrained(model, dtype=dtype)
        if adapter is not None:
            from tunelab.lora import load_adapter

            load_adapter(m, adapter)
        ids = encode_chat(tok, [{"role": "user", "content": prompt}]) if chat else tok.encode(prompt)
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


def info_command(path: str = typer.Argument(..., help=MODEL_HELP)) -> None:
    """Family, parameter count, memory in each dtype, context length."""
    from tunelab.models import ModelConfig, ModelError
    from tunelab.models.checkpoint import resolve_checkpoint
    from tunelab.models.info import describe

    try:
        directory = resolve_checkpoint(path)
        cfg = ModelConfig.from_file(directory / "config.json")
    except ModelError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    d = describe(cfg)
    if (directory / "source.json").exists():  # a GGUF conversion in the cache (models/gguf_cache.py)
        d["stored dtype"] += " (dequantised)"
        d["converted from"] = json.loads((directory / "source.json").read_text())["gguf"]
        d["cached at"] = str(directory)
    table = Table(title=str(path), show_header=False)
    for key, value in d.items():
        table.add_row(key, str(value))
    console.print(table)


def models_command() -> None:
    """Built-in models: name, size, licence, where the file comes from, and whether it is installed."""
    from tunelab.models.builtin import BUILTIN_MODELS, builtin_gguf
    from tunelab.models.config import ModelError

    for m in BUILTIN_MODELS.values():
        try:
            path = builtin_gguf(m.name)
            size, status = f"{path.stat().st_size / 1e6:.0f} MB", f"installed ({path})"
        except ModelError:
            size, status = "-", f"not installed: {m.install_hint}"
        table = Table(title=m.name, show_header=False)
        for key, value in (
            ("model", m.description), ("parameters", m.parameters), ("file size", size), ("licence", m.licence),
            ("source", f"PyPI package {m.requirement}, file {m.file}"), ("status", status),
        ):  # fmt: skip
            table.add_row(key, value)
        console.print(table)
    console.print("[dim]Use the name wherever a model is asked for: tunelab generate --model NAME ...[/dim]")


def convert_command(
    gguf_file: Path = typer.Argument(..., help="The .gguf file."),
    out_dir: Path = typer.Argument(..., help="Output directory (must not exist, or be empty)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16."),
) -> None:
    """Convert a GGUF file into a Hugging Face checkpoint directory (safetensors, config, tokenizer)."""
    from tunelab.models.config import ModelError
    from tunelab.models.gguf_convert import convert_gguf

    if dtype not in ("float32", "bfloat16", "float16"):
        console.print(f"[red]error:[/red] --dtype {dtype!r}: use float32, bfloat16 or float16", highlight=False)
        raise typer.Exit(2)
    try:
        out = convert_gguf(gguf_file, out_dir, dtype=dtype)
    except ModelError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(str(out))
