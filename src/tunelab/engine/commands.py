"""`tunelab bench generate`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("generate")(bench_generate)


def bench_generate(
    model: str = typer.Option(None, "--model", help="Checkpoint directory or built-in name. Default: a random "
                                                     "~60M Llama (see --layers, --hidden)."),
    requests: int = typer.Option(32, "--requests", min=1, help="Concurrent requests."),
    prompt_tokens: int = typer.Option(128, "--prompt-tokens", min=1),
    new_tokens: int = typer.Option(128, "--new-tokens", min=1, help="New tokens per concurrent request."),
    single_tokens: int = typer.Option(64, "--single-tokens", min=1, help="Tokens decoded in the batch-1 run."),
    single_prompt_tokens: int = typer.Option(70, "--single-prompt-tokens", min=1),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype", help="tunelab's dtype: float32 | bfloat16 | float16 "
                                                           "(transformers always runs float32)."),
    layers: int = typer.Option(8, "--layers", min=1, help="Random model only."),
    hidden: int = typer.Option(512, "--hidden", min=64, help="Random model only."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads for both sides."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Interleaved repetitions; medians are reported."),
    hf_sample: int = typer.Option(4, "--hf-sample", min=1,
                                  help="Sequential requests transformers runs; its time is scaled to --requests."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON at the end."),
) -> None:
    """tunelab's engine vs transformers `generate`: batch 1 and N concurrent requests, side by side."""
    import torch

    from tunelab.engine.bench import run_generate_bench
    from tunelab.engine.errors import EngineError

    if dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(f"--dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    torch.set_num_threads(threads)
    try:
        result = run_generate_bench(requests, prompt_tokens, new_tokens, single_tokens, device, dtype, layers, hidden,
                                    model=model, repeat=repeat, hf_sample=hf_sample,
                                    single_prompt_tokens=single_prompt_tokens)
    except EngineError as e:
        raise typer.BadParameter(str(e)) from None
    if json_out:
        typer.echo(result.to_json())
