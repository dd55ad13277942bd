"""`make demo`: the ladder on a real task, on a real model, on this machine.

Can a small tuned model replace the expensive one, and what does each rung cost? The demo answers it for one task:
classify a WordNet 3.0 dictionary entry (`headword: gloss`, written by Princeton's lexicographers, installed by
Debian's wordnet-base) into eight categories, with the built-in SmolLM2-135M-Instruct.

1. data: a balanced held-out set (25 entries per category) and a training split that never contains a held-out
   headword (`wordnet.py`); the files, prompt files and configs are written to demo/ (`task.py`).
2. `tunelab lint` on the prompt files.
3. `tunelab tune`: a LoRA adapter on the training split, with the zero-shot prompt (reused on a rerun).
4. `tunelab eval`, once per rung: zero-shot, few-shot (one training example per category), LoRA-tuned.
5. The ladder: accuracy with its 95% CI, per-request latency, tokens, cost per 1,000 items on this machine and on
   a hosted API, and the cheapest rung that clears the bar.
6. `tunelab report`: the HTML report of the three runs.
7. Which automated metric agrees with people, on the human ratings shipped with tunelab (`review.published`).

Every step is a `tunelab` command on files left in demo/, so it can be rerun and changed by hand. A rerun reuses
the adapter and the eval cache, so it takes seconds.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.demo.task import RUNGS, TuneSettings, variant, write_task
from tunelab.demo.wordnet import DATA_NOUN, LICENCE, WordNetError, read_synsets, split
from tunelab.evals.ladder import HostedPrice, Rung, good_enough, hosted_cost_per_1k, ladder, machine_cost_per_1k

MODEL = "smollm2-135m-instruct"


def describe_machine() -> str:
    """This machine in words for the ladder's table: cores, CPU model and the vector extensions the engine's kernel
    choices depend on (engine/cpu_kernels.py), e.g. '2-core Intel(R) Xeon(R) Processor (AVX512-BF16, AMX), torch CPU'."""
    from tunelab.engine.cpu_kernels import cpu_flags, cpu_model

    name = cpu_model() or platform.processor() or platform.machine()
    flags = cpu_flags()
    isa = [label for flag, label in (("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX")) if flag in flags]
    if not isa:
        isa = ["AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""]
    extensions = f" ({', '.join(isa)})" if any(isa) else ""
    return f"{os.cpu_count()}-core {name}{extensions}, torch CPU"


# What a 2-vCPU VM costs to rent; change it for yours (--machine-price).
MACHINE = describe_machine()
MACHINE_PRICE_PER_HOUR = 0.10
# A hosted model for comparison, at its list price on the date given (--hosted-* to change).
HOSTED = HostedPrice(model="gpt-4o-mini", input_per_1m=0.15, output_per_1m=0.60, as_of="2024-07-18")
QUALITY_BAR = 0.85


@dataclass
class DemoConfig:
    model: str = MODEL
    wordnet: Path = DATA_NOUN
    folder: Path = Path("demo")
    held_out_per_label: int = 25
    train_per_label: int = 150
    tune: TuneSettings = field(default_factory=TuneSettings)
    concurrency: int = 32
    bar: float = QUALITY_BAR
    machine: str = MACHINE
    machine_price_per_hour: float = MACHINE_PRICE_PER_HOUR
    hosted: HostedPrice = HOSTED
    validation: bool = True  # the human-judgment story at the end (tests of the ladder alone turn it off)


def run_demo(cfg: DemoConfig, console=None) -> dict:
    """The whole demo; returns what it printed as data (also written to demo/ladder.json)."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    started = time.perf_counter()
    console.rule("[bold]tunelab demo: zero-shot -> few-shot -> LoRA on WordNet noun categories")
    console.print(f"model: {cfg.model}; machine: {cfg.machine}")

    console.rule(f"1/7 data: WordNet 3.0 nouns from {cfg.wordnet}")
    try:
        data = split(read_synsets(cfg.wordnet), cfg.held_out_per_label, cfg.train_per_label)
    except FileNotFoundError:
        raise SystemExit(f"error: {cfg.wordnet} not found. Install Debian's WordNet data "
                         "(sudo apt-get install wordnet-base; `make demo` does it) or pass --wordnet PATH.") from None
    except WordNetError as exc:
        raise SystemExit(f"error: {exc}") from None
    files = write_task(cfg.folder, data, cfg.model, cfg.tune, cfg.concurrency)
    console.print(f"{len(data.train)} training and {len(data.held_out)} held-out entries (split by headword), "
                  f"e.g. [italic]{escape(data.held_out[0].entry)}[/italic] -> {data.held_out[0].category}")
    console.print(f"[dim]{LICENCE}[/dim]")

    console.rule("2/7 tunelab lint (the prompt files)")
    _tunelab(console, "lint", str(cfg.folder / "prompts"))

    console.rule("3/7 tunelab tune (LoRA on the training split, zero-shot prompt)")
    if (files.adapter / "adapter_config.json").exists():
        console.print(f"reusing {files.adapter} (same model, data and settings)")
    else:
        _tunelab(console, "tune", str(files.tune))
    tune_s = json.loads((files.adapter / "train_summary.json").read_text())["wall_s"]

    console.rule("4/7 tunelab eval, one run per rung, on the held-out set")
    db = cfg.folder / "tunelab.db"
    runs = {}
    for name, path in files.rungs.items():
        t0 = time.perf_counter()
        runs[name] = _tunelab(console, "eval", str(path), "--db", str(db), capture=True).strip().splitlines()[-1]
        console.print(f"{name}: run {runs[name]} in {time.perf_counter() - t0:.0f} s")

    console.rule("5/7 the ladder")
    rungs = _rungs(db, runs, cfg.concurrency)
    best = good_enough(rungs, cfg.bar, cost=lambda r: machine_cost_per_1k(r, cfg.machine_price_per_hour))
    table = ladder_markdown(rungs, cfg, tune_s)
    _print_ladder(console, table, best, cfg)

    console.rule("6/7 tunelab report")
    report = cfg.folder / "report.html"
    _tunelab(console, "report", *runs.values(), "--db", str(db), "-o", str(report), capture=True)
    summary = {"model": cfg.model, "machine": cfg.machine, "bar": cfg.bar, "runs": runs, "tune_seconds": tune_s,
               "rungs": [asdict(r) for r in rungs], "good_enough": best.name if best else None,
               "table": table, "report": str(report.resolve()), "seconds": time.perf_counter() - started}  # fmt: skip
    (cfg.folder / "ladder.json").write_text(json.dumps(summary, indent=2) + "\n")
    (cfg.folder / "ladder.md").write_text(table + "\n")
    console.print(f"report: {report.resolve()}")

    # 7. Which automated score agrees with people: offline, on the human ratings shipped with tunelab.
    if cfg.validation:
        from tunelab.review.published import validation_story

        console.rule("7/7 which metric agrees with people?")
        validation_story(console, db=str(db))

    console.print(f"[dim]demo took {time.perf_counter() - started:.0f} s. Rerun a step by hand: tunelab tune {files.tune}; "
                  f"tunelab eval {files.rungs['zero-shot']} --db {db}[/dim]")
    return summary


def ladder_markdown(rungs: list[Rung], cfg: DemoConfig, tune_s: float) -> str:
    """The ladder as a Markdown table (what the README shows), one row per rung."""
    hosted = cfg.hosted
    head = ["rung", "accuracy (95% CI)", "p50 / p95 latency", "tokens in / out", "items/s",
            f"$ / 1k items here (${cfg.machine_price_per_hour:g}/h)",
            f"$ / 1k items on {hosted.model} (${hosted.input_per_1m:g} / ${hosted.output_per_1m:g} per 1M, "
            f"{hosted.as_of})"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rungs:
        here = machine_cost_per_1k(r, cfg.machine_price_per_hour)
        name = r.name
        if r.name == "LoRA-tuned":  # the one-off price of the rung
            name += f" (tuned once: {tune_s / 60:.1f} min, ${tune_s / 3600 * cfg.machine_price_per_hour:.4f})"
        lines.append("| " + " | ".join([
            name,
            "-" if r.quality is None else f"{100 * r.quality:.1f}% ({100 * r.ci_low:.1f}-{100 * r.ci_high:.1f}%)",
            "-" if r.latency_p50_s is None else f"{r.latency_p50_s:.2f} s / {r.latency_p95_s:.2f} s",
            f"{r.prompt_tokens_per_item:.0f} / {r.completion_tokens_per_item:.1f}",
            "-" if r.items_per_s is None else f"{r.items_per_s:.1f}",
            "-" if here is None else f"${here:.4f}",
            f"${hosted_cost_per_1k(r, hosted):.4f}",
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def _rungs(db: Path, runs: dict[str, str], concurrency: int) -> list[Rung]:
    from tunelab.evals.store import Store

    out = []
    with Store(db) as store:
        for name, run in runs.items():
            out += ladder(store.results(run), {name: variant(name)}, "exact_match", concurrency)
    return out


def _print_ladder(console, table: str, best: Rung | None, cfg: DemoConfig) -> None:
    n = cfg.held_out_per_label * 8
    console.print(f"The ladder on {n} held-out entries, accuracy bar {100 * cfg.bar:g}%, on {cfg.machine}:")
    console.print(table, markup=False, highlight=False, soft_wrap=True)
    if best is None:
        console.print(f"No rung reaches {100 * cfg.bar:g}%: more data, more steps, or a bigger base model.")
    else:
        console.print(f"Good enough: [bold]{best.name}[/bold], the cheapest rung that reaches {100 * cfg.bar:g}%.")
    console.print("[dim]Latency: each request's own time under continuous batching with "
                  f"{cfg.concurrency} in flight. Cost here: machine time at the measured throughput; hosted: the "
                  "same token counts (this model's tokenizer) at the list price.[/dim]")


def _tunelab(console, *args: str, capture: bool = False) -> str:
    console.print(f"[bold cyan]$ tunelab {' '.join(args)}[/bold cyan]")
    out = subprocess.run([sys.executable, "-m", "tunelab", *args], text=True,
                         stdout=subprocess.PIPE if capture else None)
    if out.returncode != 0:
        raise SystemExit(f"`tunelab {args[0]}` failed (exit {out.returncode}); its message is above")
    return out.stdout or ""
