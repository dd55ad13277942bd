"""`tunelab serve MODEL_PATH`: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    model_path: str = typer.Argument(..., help="Built-in model name, .gguf file or checkpoint directory (HF layout)."),
    adapter: list[str] = typer.Option([], "--adapter", help="LoRA adapter as name=DIR (PEFT format); repeatable."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    max_queue: int | None = typer.Option(None, "--max-queue", min=0, help="Waiting requests before answering 429."),
    max_num_seqs: int = typer.Option(64, "--max-num-seqs", min=1, help="Sequences decoded together."),
    max_model_len: int | None = typer.Option(None, "--max-model-len", min=2),
    kv_cache_memory: int | None = typer.Option(None, "--kv-cache-memory", help="Bytes for the KV cache."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: as stored)."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    served_model_name: str | None = typer.Option(None, "--served-model-name",
                                                 help="Name clients pass as `model` (default: the directory name)."),
    max_body_bytes: int = typer.Option(2 << 20, "--max-body-bytes", min=1, help="Larger request bodies get 413."),
    max_json_depth: int = typer.Option(64, "--max-json-depth", min=1, help="Deeper JSON bodies get 400."),
    max_messages: int = typer.Option(1024, "--max-messages", min=1, help="Messages per chat request."),
    max_stop: int = typer.Option(4, "--max-stop", min=0, help="Stop strings per request (OpenAI allows 4)."),
    max_n: int = typer.Option(16, "--max-n", min=1, help="Choices per request (`n`)."),
) -> None:
    """Serve a model (and LoRA adapters chosen by the request's `model`) over OpenAI's HTTP API."""
    import uvicorn

    from tunelab.engine import LLM, AsyncLLM, EngineError
    from tunelab.engine.commands import adapter_flags
    from tunelab.models import ModelError
    from tunelab.serve import create_app
    from tunelab.serve.request_body import Limits

    adapters = adapter_flags(adapter)
    try:
        llm = LLM(model_path, dtype=dtype, device=device, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                  kv_cache_memory=kv_cache_memory, adapters=adapters)
    except (EngineError, ModelError, OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    name = served_model_name or Path(model_path).name
    engine = AsyncLLM(llm, max_queue=max_queue)
    typer.echo(f"serving {name} (adapters: {', '.join(adapters) or 'none'}) on http://{host}:{port}/v1")
    limits = Limits(max_body_bytes=max_body_bytes, max_json_depth=max_json_depth, max_messages=max_messages,
                    max_stop=max_stop, max_n=max_n)
    uvicorn.run(create_app(engine, name, api_key=api_key, limits=limits), host=host, port=port, log_level="info")
