"""`tunelab bench generate`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("generate")(bench_generate)


def bench_generate(
    requests: int = typer.Option(32, "--requests", min=1, help="Concurrent requests."),
    prompt_tokens: int = typer.Option(128, "--prompt-tokens", min=1),
    new_tokens: int = typer.Option(128, "--new-tokens", min=1, help="New tokens per concurrent request."),
    single_tokens: int = typer.Option(128, "--single-tokens", min=1, help="Tokens decoded in the batch-1 run."),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    layers: int = typer.Option(8, "--layers", min=1),
    hidden: int = typer.Option(512, "--hidden", min=64),
    threads: int = typer.Option(1, "--threads", min=1,
                                help="torch CPU threads for both sides. 1 by default: on a shared box, more threads "
                                     "than idle cores make OpenMP spin and the figures meaningless."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON at the end."),
) -> None:
    """tunelab's engine vs transformers `generate` on a random ~60M Llama: batch 1 and N concurrent requests."""
    import torch

    from tunelab.engine.bench import run_generate_bench

    torch.set_num_threads(threads)
    result = run_generate_bench(requests, prompt_tokens, new_tokens, single_tokens, device, dtype, layers, hidden)
    if json_out:
        typer.echo(result.to_json())
