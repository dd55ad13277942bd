"""The demo's rungs with one provider setting changed (dtype, engine options), measured on the real ladder.

Issue 12 asks two things of the demo's ladder: each rung's accuracy in 16-bit within 1 point of fp32, and the
few-shot rung at least 2x faster end to end with prefix caching than without. After `make demo`
(docs/benchmarks.md, "The demo's ladder: 16-bit and prefix caching"):

    python -m tunelab.demo.variants write demo/rungs/few-shot.yaml --dtype bfloat16 --prefix-caching off
        -> demo/rungs/few-shot.bfloat16.no-prefix-cache.yaml: the same config, every tunelab provider changed
    python -m tunelab.demo.variants diff RUN_A RUN_B --db demo/tunelab.db
        -> each run's accuracy on the items both ran, and how many outputs differ
    python -m tunelab.demo.variants time A.yaml B.yaml --rounds 2 --db demo/timing.db
        -> `tunelab eval --no-cache` A, B, A, B: wall time of each, the load average before it, medians, B / A
    python -m tunelab.demo.variants hit-rate CONFIG RUN --db demo/tunelab.db
        -> the engine's prefix-cache hit rate on that run's rendered prompts, with CONFIG's provider settings

Accuracy and outputs come from the results database, so the comparison is on the same items and prompts.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import typer
import yaml

from tunelab.evals.errors import EvalError

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def variant_config(config: dict, dtype: str | None, prefix_caching: bool | None) -> dict:
    """`config` with every `type: tunelab` provider given this dtype and prefix-caching setting (None: unchanged)."""
    out = json.loads(json.dumps(config))
    for provider in out.get("providers", []):
        if provider.get("type") != "tunelab":
            continue
        if dtype is not None:
            provider["dtype"] = dtype
        if prefix_caching is not None:
            provider["engine"] = {**provider.get("engine", {}), "enable_prefix_caching": prefix_caching}
    return out


def variant_path(config: Path, dtype: str | None, prefix_caching: bool | None) -> Path:
    """Next to `config`, so its relative paths (dataset, prompt files, adapter) still resolve."""
    tags = [dtype] if dtype else []
    if prefix_caching is not None:
        tags.append("prefix-cache" if prefix_caching else "no-prefix-cache")
    return config.with_name(".".join([config.stem, *tags]) + config.suffix)


def output_diff(db: Path, run_a: str, run_b: str) -> dict:
    """Each run's mean score per metric and how many outputs differ, on the (item, variant, repeat) both hold."""
    from tunelab.evals.store import Store

    with Store(db) as store:
        a = {(r.item_id, r.variant, r.repeat): r for r in store.results(run_a)}
        b = {(r.item_id, r.variant, r.repeat): r for r in store.results(run_b)}
    shared = sorted(a.keys() & b.keys())
    if not shared:
        raise EvalError(f"{db}: runs {run_a} and {run_b} share no item x variant x repeat; nothing to compare")
    metrics = sorted({m for k in shared for m in a[k].scores} & {m for k in shared for m in b[k].scores})
    mean = {m: [_mean([run[k].scores.get(m) for k in shared]) for run in (a, b)] for m in metrics}
    differ = [k for k in shared if a[k].output != b[k].output or a[k].error != b[k].error]
    return {"items": len(shared), "metrics": mean, "outputs_differ": len(differ),
            "differ": [{"item": k[0], "variant": k[1], "a": a[k].output, "b": b[k].output} for k in differ]}


def hit_rate(config: Path, db: Path, run: str) -> dict:
    """Prompt tokens found in the prefix cache when RUN's rendered prompts, with its parameters, go through CONFIG's
    (only) tunelab provider again, as `tunelab eval` sends them (CONFIG's concurrency in flight)."""
    from tunelab.evals.config import load_config
    from tunelab.evals.store import Store

    cfg = load_config(config)
    providers = [p for p in cfg.providers if p.type == "tunelab"]
    if len(providers) != 1:
        raise EvalError(f"{config}: expected one provider of type tunelab, found {len(providers)}")
    with Store(db) as store:
        rows = [r for r in store.results(run) if r.provider_id == providers[0].id]
        params = store.run_config(run)["effective_params"]
    if not rows:
        raise EvalError(f"{db}: run {run} has no outputs of provider {providers[0].id!r} (from {config})")
    return asyncio.run(_replay(providers[0], rows, params, cfg.concurrency))


async def _replay(cfg, rows: list, params: dict, concurrency: int) -> dict:
    from tunelab.evals.providers import TunelabProvider

    provider, slots = TunelabProvider(cfg), asyncio.Semaphore(concurrency)

    async def one(row):
        async with slots:
            return await provider.complete(row.rendered, params[row.variant])

    t0 = time.perf_counter()
    outputs = await asyncio.gather(*(one(r) for r in rows))
    seconds = time.perf_counter() - t0
    blocks = provider._engine.llm.block_manager  # the provider's engine: it keeps no statistics of its own
    await provider.aclose()
    first = outputs[0].prompt_tokens
    return {"requests": len(rows), "prompt_tokens": blocks.queried_tokens, "cached_tokens": blocks.hit_tokens,
            "hit_rate": blocks.hit_rate,
            # Issue 12's measure: of requests 2..N's prompt tokens, the share computed (request 1 computes all its own).
            "computed_share_after_first": (blocks.queried_tokens - blocks.hit_tokens - first)
            / max(1, blocks.queried_tokens - first),
            "seconds": seconds, "same_outputs_as_run": sum(o.text == r.output for o, r in zip(outputs, rows))}


def timed_evals(configs: list[Path], rounds: int, db: Path) -> list[dict]:
    """`tunelab eval CONFIG --no-cache` for each config in turn, `rounds` times (A, B, A, B, ...): whole-process
    wall time, so model loading and start-up count as they do for a user."""
    runs = []
    for n in range(rounds):
        for config in configs:
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "tunelab", "eval", str(config), "--db", str(db), "--no-cache"],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise EvalError(f"{config}: tunelab eval failed (exit {done.returncode}): {done.stderr[-2000:]}")
            runs.append({"round": n + 1, "config": str(config), "run": done.stdout.strip().splitlines()[-1],
                         "wall_s": wall, "load_1min_before": load})
            print(f"round {n + 1} {config}: {wall:.1f} s (load {load:.2f} before)", file=sys.stderr, flush=True)
    return runs


@app.command()
def write(config: Path, dtype: str = typer.Option(None, help="float32 | bfloat16 | float16"),
          prefix_caching: str = typer.Option(None, help="on | off (the engine's enable_prefix_caching)")) -> None:
    """Write CONFIG with its tunelab providers changed, next to it; prints the new path."""
    if prefix_caching not in (None, "on", "off"):
        raise typer.BadParameter(f"expected on or off, got {prefix_caching!r}", param_hint="--prefix-caching")
    caching = None if prefix_caching is None else prefix_caching == "on"
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    out = variant_path(config, dtype, caching)
    out.write_text(yaml.safe_dump(variant_config(data, dtype, caching), sort_keys=False, width=120), encoding="utf-8")
    from tunelab.evals.config import load_config

    load_config(out)  # the eval reader checks the new fields (a bad dtype fails here, naming the file)
    print(out)


@app.command()
def diff(run_a: str, run_b: str, db: Path = typer.Option(Path("tunelab.db")),
         show: int = typer.Option(0, help="Also print this many differing outputs.")) -> None:
    """Each run's mean score per metric on the items both ran, and how many outputs differ."""
    d = output_diff(db, run_a, run_b)
    for metric, (a, b) in d["metrics"].items():
        print(f"{metric}: A {_pct(a)}  B {_pct(b)}  B - A {_pct(None if a is None or b is None else b - a)} points")
    print(f"outputs differ: {d['outputs_differ']} of {d['items']}")
    for row in d["differ"][:show]:
        print(f"  {row['item']} {row['variant']}: {row['a']!r} -> {row['b']!r}")


@app.command("hit-rate")
def hit_rate_command(config: Path, run: str, db: Path = typer.Option(Path("tunelab.db"))) -> None:
    """The engine's prefix-cache hit rate on RUN's rendered prompts, with CONFIG's provider settings."""
    print(json.dumps(hit_rate(config, db, run), indent=2))


@app.command("time")
def time_command(configs: list[Path], rounds: int = typer.Option(2, min=1),
                 db: Path = typer.Option(Path("tunelab.db")),
                 out: Path = typer.Option(None, help="Also write every run's figures here (JSON).")) -> None:
    """`tunelab eval --no-cache` on each config in turn, ROUNDS times; the median wall time of each, and each
    median over the first config's."""
    runs = timed_evals(configs, rounds, db)
    medians = {str(c): statistics.median(r["wall_s"] for r in runs if r["config"] == str(c)) for c in configs}
    base = medians[str(configs[0])]
    for config, median in medians.items():
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs if r["config"] == config)
        print(f"{config}: {walls} s; median {median:.1f} s; {median / base:.2f}x the first")
    if out is not None:
        out.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2) + "\n")


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main() -> None:
    try:
        app()
    except EvalError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
