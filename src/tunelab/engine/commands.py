"""`tunelab bench generate` and `tunelab build`."""

from __future__ import annotations

import importlib.util

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    bench.command("generate")(bench_generate)
    app.command("build")(build_command)


def adapter_flags(items: list[str]) -> dict[str, str]:
    """`--adapter name=DIR` flags (of `tunelab build` and `tunelab serve`) as {name: directory}."""
    adapters: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise typer.BadParameter(f"--adapter {item!r}: expected name=DIR (the name requests use, then the "
                                     "directory of a PEFT adapter)")
        if name in adapters:
            raise typer.BadParameter(f"--adapter {item!r}: the name {name!r} is given twice")
        adapters[name] = directory
    return adapters


def build_command(
    model: str = typer.Argument(..., help="Checkpoint directory or built-in name."),
    output: str = typer.Option(..., "-o", "--output", help="New directory for the build."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=DIR of a PEFT adapter (repeatable)."),
    merge: bool = typer.Option(False, "--merge", help="Fold the adapters into the weights."),
    dtype: str = typer.Option(None, "--dtype", help="float16 | bfloat16 | float32 (default: the 16-bit type that "
                                                     "decodes one sequence fastest here: float16 on AVX2 CPUs, "
                                                     "bfloat16 on AVX512-BF16 CPUs, GPUs and with --quant)."),
    quant: str = typer.Option(None, "--quant", help="int8 | int4: weight-only quantisation of the projection "
                                                    "layers (default: none). See docs/benchmarks.md for when it is "
                                                    "faster than 16-bit."),
    group_size: int = typer.Option(None, "--group-size", help="int4: input columns per scale (32, 64, 128, 256; "
                                                              "default 32)."),
    device: str = typer.Option("cpu", "--device", help="Where the build will run."),
) -> None:
    """Convert a model (and adapters) once for a device: weights in the target dtype, adapters merged, a manifest."""
    from tunelab.engine.build import build
    from tunelab.engine.errors import EngineError
    from tunelab.models.config import ModelError

    try:
        manifest = build(model, output, dtype=dtype, device=device, adapters=adapter_flags(adapter), merge=merge,
                         quant=quant, group_size=group_size)
    except (EngineError, ModelError) as e:
        raise typer.BadParameter(str(e)) from None
    weights = manifest.dtype if manifest.quant is None else f"{manifest.quant['mode']} weights, {manifest.dtype}"
    typer.echo(f"built {output}: {weights} for {manifest.device_kind}, source sha256 "
               f"{manifest.source_sha256[:12]}, merged: {sorted(manifest.merged_adapters) or 'none'}")


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
    heads: int = typer.Option(8, "--heads", min=1, help="Random model only: attention heads."),
    kv_heads: int = typer.Option(None, "--kv-heads", min=1, help="Random model only: key/value heads (default: "
                                                                 "--heads). 22 layers, hidden 2048, 32 heads, 4 kv "
                                                                 "heads is TinyLlama-1.1B's shape."),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads for both sides."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Interleaved repetitions; medians are reported."),
    hf_sample: int = typer.Option(4, "--hf-sample", min=1,
                                  help="Sequential requests transformers runs; its time is scaled to --requests."),
    stall_prompt_tokens: int = typer.Option(2000, "--stall-prompt-tokens", min=0,
                                            help="Measure streams' time between tokens while a prompt this long is "
                                                 "admitted (0: skip)."),
    against: str = typer.Option(None, "--against", help="llama-cpp: also time llama.cpp on --gguf, at batch 1 and "
                                                          "the N requests one by one (needs llama-cpp-python)."),
    gguf: str = typer.Option(None, "--gguf", help="GGUF file for --against llama-cpp (default: the built-in "
                                                  "model's, for --model smollm2-135m-instruct)."),
    build: str = typer.Option(None, "--build", help="A `tunelab build` directory: tunelab runs it as built, "
                                                     "transformers runs its source model; a quantised build is also "
                                                     "timed against the source in float16 and bfloat16."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON at the end."),
) -> None:
    """tunelab's engine vs transformers `generate`: batch 1 and N concurrent requests, side by side."""
    import torch

    from tunelab.engine.bench import run_generate_bench
    from tunelab.engine.errors import EngineError

    if dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(f"--dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    if build and (model or dtype != "float32"):
        raise typer.BadParameter("--build: a build fixes the model and dtype; drop --model and --dtype")
    if against not in (None, "llama-cpp"):
        raise typer.BadParameter(f"--against: only llama-cpp is supported, got {against!r}")
    if against and importlib.util.find_spec("llama_cpp") is None:
        raise typer.BadParameter("--against llama-cpp needs llama-cpp-python, which is not installed: "
                                 "pip install llama-cpp-python (it builds llama.cpp from source, ~10 minutes on 2 "
                                 "cores; see docs/benchmarks.md)")
    if against and gguf is None:
        from tunelab.models.builtin import builtin_gguf

        try:
            gguf = str(builtin_gguf(model))
        except Exception:
            raise typer.BadParameter("--against llama-cpp: give the GGUF file of the same weights with --gguf") from None
    torch.set_num_threads(threads)
    try:
        result = run_generate_bench(requests, prompt_tokens, new_tokens, single_tokens, device, dtype, layers, hidden,
                                    model=model, repeat=repeat, hf_sample=hf_sample,
                                    single_prompt_tokens=single_prompt_tokens,
                                    stall_prompt_tokens=stall_prompt_tokens,
                                    against_gguf=gguf if against else None, build=build, heads=heads,
                                    kv_heads=kv_heads)
    except EngineError as e:
        raise typer.BadParameter(str(e)) from None
    if json_out:
        typer.echo(result.to_json())
