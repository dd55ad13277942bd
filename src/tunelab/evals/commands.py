"""CLI: `tunelab eval`, `runs`, `results`, `compare`, `report`, `ladder`, `bench eval`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tunelab.evals.errors import EvalError

DB_HELP = "Results database (SQLite)."


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("runs")(runs_command)
    app.command("results")(results_command)
    app.command("compare")(compare_command)
    app.command("report")(report_command)
    app.command("ladder")(ladder_command)
    bench.command("eval")(bench_eval_command)


def eval_command(
    config: Path = typer.Argument(..., help="Eval config (YAML)."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="Call providers and recompute everything."),
    resume: str = typer.Option(None, "--resume", help="Complete only what RUN_ID is missing."),
    strict: bool = typer.Option(False, "--strict", help="Stop when the prompt linter reports an error."),
    progress_every: float = typer.Option(10.0, "--progress-every",
                                         help="Seconds between progress lines when stderr is not a terminal."),
) -> None:
    """Run datasets × prompts × providers, score with metrics and judges, store the run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunelab.evals.config import load_config
    from tunelab.evals.dataset import load_dataset
    from tunelab.evals.runner import run_eval
    from tunelab.evals.store import Store
    from tunelab.evals.templates import lint_prompts

    console = Console(stderr=True)
    with _errors():
        cfg = load_config(config)
        rows = load_dataset(cfg.dataset if isinstance(cfg.dataset, list) else cfg.resolve(cfg.dataset))
        findings = lint_prompts(cfg, rows)
        for f in findings:
            console.print(f"{f.path}:{f.line}:{f.column}: {f.severity} {f.rule}: {f.message}", markup=False,
                          highlight=False)
        if strict and any(f.severity == "error" for f in findings):
            raise EvalError("--strict: the prompt linter reported errors; fix them or drop --strict")
        store = Store(db)
        if console.is_terminal:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=False) as bar:
                tasks: dict[str, int] = {}

                def progress(phase: str, done: int, total: int) -> None:
                    if phase not in tasks:
                        tasks[phase] = bar.add_task(phase, total=total)
                    bar.update(tasks[phase], completed=done, total=total)

                stats = run_eval(cfg, store, use_cache=not no_cache, resume=resume, progress=progress)
        else:
            stats = run_eval(cfg, store, use_cache=not no_cache, resume=resume,
                             progress=LineProgress(progress_every, lambda line: typer.echo(line, err=True)))
        _print_summary(store, stats.run_id)
        judged = ", ".join(f"{j}: {stats.verdicts_computed[j]} new, {stats.verdicts_cached[j]} cached, "
                           f"{stats.verdicts_resumed[j]} resumed"
                           + (f" (G-Eval: {_methods(stats.geval_methods[j])})" if j in stats.geval_methods
                              else "" if stats.structured_judges[j] else " (plain-text replies)")
                           for j in stats.verdicts_computed)
        console.print(f"provider calls: {stats.provider_calls} (cached {stats.cached_responses}, "
                      f"resumed {stats.resumed}), judge calls: {stats.judge_calls}, errors: {stats.errors}"
                      + (f"; verdicts: {judged}" if judged else ""), highlight=False)
        for message in stats.metric_errors[:10] + stats.warnings:
            console.print(f"[yellow]warning:[/] {message}", highlight=False)
        typer.echo(stats.run_id)


def _methods(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} by {m}" for m, n in sorted(counts.items()))


class LineProgress:
    """Progress without a terminal (a pipe, a log file, CI): one line per phase every
    `every_s` seconds, and one when the phase completes."""

    def __init__(self, every_s: float, write) -> None:  # type: ignore[no-untyped-def]
        import time

        self.every_s, self.write, self.clock = every_s, write, time.monotonic
        self.phase: str | None = None
        self.started = self.last = 0.0
        self.finished: set[str] = set()

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        if phase != self.phase:
            self.phase, self.started, self.last = phase, now, now
        if phase in self.finished or (done < total and now - self.last < self.every_s):
            return
        self.last = now
        elapsed = now - self.started
        eta = f", about {elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        percent = f" ({100 * done / total:.0f}%)" if total else ""
        self.write(f"{phase}: {done}/{total}{percent}, {elapsed:.0f} s{eta}")
        if done >= total:
            self.finished.add(phase)


def runs_command(
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
    format: str = typer.Option("table", "--format", help="table or json"),
    prune: bool = typer.Option(False, "--prune", help="Delete interrupted and failed runs (the caches stay)."),
) -> None:
    """List runs in the database (a run whose process died shows as interrupted)."""
    import time

    from tunelab.evals.store import Store

    with _errors():
        store = Store(db)
        runs = store.runs()
        if prune:
            dead = [r.id for r in runs if r.status in ("interrupted", "failed")]
            store.delete_runs(dead)
            for run_id in dead:
                typer.echo(f"pruned {run_id}")
            typer.echo(f"{len(dead)} run(s) pruned, {len(runs) - len(dead)} kept")
            return
        if format == "json":
            typer.echo(json.dumps([r.to_dict() for r in runs], indent=2))
            return
        if format != "table":
            raise EvalError(f"--format: expected table or json, got {format!r}")
        for r in runs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at))
            typer.echo(f"{r.id}  {when}  {r.status:<11}  items={r.n_items} outputs={r.n_outputs} "
                       f"errors={r.n_errors} verdicts={r.n_verdicts} unparsed={r.n_parse_failures}  "
                       f"{r.description or ''}")
        unfinished = [r for r in runs if r.status in ("interrupted", "failed")]
        if unfinished:
            typer.echo(f"{len(unfinished)} run(s) did not finish: `tunelab eval CONFIG --resume RUN_ID` completes "
                       "one; `tunelab runs --prune` deletes them")


VARIANT_HELP = "Only variants matching this glob (e.g. '*@lora'); repeat for more."
METRIC_HELP = "Only this metric or judge (its id; 'judge:ID' for a judge); repeat for more."


def results_command(
    run_id: str = typer.Argument(..., help="Run id, a unique prefix, or 'latest'."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
    format: str = typer.Option("jsonl", "--format", help="jsonl or csv"),
    output: Path = typer.Option(None, "-o", "--output", help="Write to a file instead of stdout."),
    variant: list[str] = typer.Option(None, "--variant", help=VARIANT_HELP),
    metric: list[str] = typer.Option(None, "--metric", help=METRIC_HELP),
) -> None:
    """Export one row per item × variant × repeat."""
    from tunelab.evals.export import to_csv, to_jsonl
    from tunelab.evals.store import Store

    with _errors():
        if format not in ("jsonl", "csv"):
            raise EvalError(f"--format: expected jsonl or csv, got {format!r}")
        rows = _selected_rows(Store(db), run_id, variant, metric)
        text = to_jsonl(rows) if format == "jsonl" else to_csv(rows)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)


def compare_command(
    run_a: str = typer.Argument(..., help="Baseline run (or the only run, with --a and --b)."),
    run_b: str = typer.Argument(None, help="Candidate run; omit to compare two variants of RUN_A."),
    a: str = typer.Option(None, "--a", help="Variant A (prompt@provider)."),
    b: str = typer.Option(None, "--b", help="Variant B (prompt@provider)."),
    metric: list[str] = typer.Option(None, "--metric", help=METRIC_HELP),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Paired bootstrap 95% CI of each metric's difference (B - A) on shared items: two runs, or two variants."""
    from rich.console import Console
    from rich.table import Table

    from tunelab.evals.compare import compare_runs
    from tunelab.evals.store import Store

    with _errors():
        store = Store(db)
        ra = store.resolve_run(run_a)
        rb = store.resolve_run(run_b) if run_b else ra
        if rb == ra and not (a and b):
            raise EvalError("one run: name the two variants to compare, e.g. "
                            "`tunelab compare RUN --a chat-zero@base --b chat-zero@lora`")
        comparisons = compare_runs(store, ra, rb, variant_a=a, variant_b=b, metrics=metric or None)
        title = f"{b} minus {a} (run {ra}, paired by item)" if ra == rb else f"{rb} minus {ra}"
        table = Table(title=title)
        for col in ("metric", "variant A", "variant B", "n", "A [95% CI]", "B [95% CI]", "B - A [95% CI]", "p",
                    "missing A / B"):
            table.add_column(col)
        for c in comparisons:
            table.add_row(c.metric, c.variant_a, c.variant_b, str(c.diff.n), _est(c.a), _est(c.b),
                          f"{c.diff.mean:+.4g} [{c.diff.low:+.4g}, {c.diff.high:+.4g}]", f"{c.p_value:.3f}",
                          f"{c.missing_a} / {c.missing_b}")
        Console(width=180).print(table)
        if not comparisons:
            typer.echo("no metric has values on both sides for the same items", err=True)


def report_command(
    run_ids: list[str] = typer.Argument(..., help="One or more run ids (or 'latest')."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="HTML file to write."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
    variant: list[str] = typer.Option(None, "--variant", help=VARIANT_HELP),
    metric: list[str] = typer.Option(None, "--metric", help=METRIC_HELP),
) -> None:
    """Write a self-contained HTML report: summary, plots and a per-item grid to debug with."""
    from tunelab.evals.report import build_report
    from tunelab.evals.store import Store

    with _errors():
        output.write_text(build_report(Store(db), run_ids, variants=variant or None, metrics=metric or None),
                          encoding="utf-8")
        typer.echo(f"wrote {output}")


def ladder_command(
    run_id: str = typer.Argument("latest", help="The eval run (or 'latest')."),
    rung: list[str] = typer.Option(..., "--rung", help="NAME=VARIANT (prompt@provider), in ladder order; repeat."),
    metric: str = typer.Option(..., "--metric", help="The quality metric or judge (its id in the eval config)."),
    bar: float = typer.Option(..., "--bar", help="Quality a rung must reach to be good enough."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the rungs as JSON."),
) -> None:
    """Zero-shot -> few-shot -> tuned: quality, latency, tokens and cost per rung, and the cheapest good enough."""
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from tunelab.evals.ladder import good_enough, ladder
    from tunelab.evals.selection import RunNames
    from tunelab.evals.store import Store
    from tunelab.evals.summary import judge_health

    with _errors():
        rungs_spec = {}
        for spec in rung:
            name, sep, variant = spec.partition("=")
            if not sep or not name or "@" not in variant:
                raise EvalError(f"--rung {spec!r}: expected NAME=PROMPT@PROVIDER, e.g. zero-shot=zero-shot@small")
            rungs_spec[name] = variant
        with Store(db) as store:
            run = store.resolve_run(run_id)
            rows = store.results(run)
            config = store.run_config(run)
        names = RunNames.of(rows, config, f"run {run}")
        measure = names.measure(metric, "--metric")
        for name, variant in rungs_spec.items():
            names.variant(variant, f"--rung {name}")
        rungs = ladder(rows, rungs_spec, measure)
        best = good_enough(rungs, bar)
        flagged = [h for h in judge_health(rows, config) if h.flagged and measure == f"judge:{h.judge_id}"]
        if as_json:
            typer.echo(json.dumps({"run_id": run, "metric": measure, "bar": bar, "rungs": [asdict(r) for r in rungs],
                                   "good_enough": best.name if best else None,
                                   "flagged_judge": flagged[0].warning() if flagged else None}, indent=2))
            return
        table = Table(title=f"the ladder: run {run}, {measure} >= {bar:g}")
        for col in ("rung", "variant", f"{measure} (95% CI)", "errors", "unparsed", "p50 latency",
                    "tokens in / out per item", "cost / 1k items"):
            table.add_column(col, justify="right")
        for r in rungs:
            quality = "no value" if r.quality is None else f"{r.quality:.3g} ({r.ci_low:.3g} to {r.ci_high:.3g})"
            table.add_row(r.name, r.variant, quality, str(r.errors), str(r.unparsed),
                          "-" if r.latency_p50_s is None else f"{1000 * r.latency_p50_s:.0f} ms",
                          f"{r.prompt_tokens_per_item:.0f} / {r.completion_tokens_per_item:.0f}",
                          "-" if r.cost_per_1k_items is None else f"${r.cost_per_1k_items:.4f}")  # fmt: skip
        console = Console(width=160)
        console.print(table)
        for h in flagged:
            console.print(f"[bold red]WARNING:[/] {h.warning()}", highlight=False)
        if flagged or all(r.quality is None for r in rungs):
            console.print("No verdict: the quality figures are missing or rest on too few parseable verdicts; "
                          "fix the measurement before the model.")
        elif best is None:
            console.print(f"No rung reaches {bar:g}: more data, more steps, or a bigger base model.")
        else:
            console.print(f"Good enough: [bold]{best.name}[/bold], the cheapest rung that reaches {bar:g}.")


def bench_eval_command(
    items: int = typer.Option(1000, help="Dataset rows."),
    concurrency: int = typer.Option(32, help="Concurrent requests."),
    delay_ms: float = typer.Option(50.0, help="Fixed server latency per request."),
) -> None:
    """Harness overhead per item beyond the server's own latency (target <= 2 ms/item)."""
    from tunelab.evals.bench import bench_eval

    r = bench_eval(items, concurrency, delay_ms / 1000)
    typer.echo(f"{r.items} items, concurrency {r.concurrency}, server delay {delay_ms:g} ms "
               f"-> ideal {r.ideal_s:.2f} s (ceil(N/C) x delay)")
    typer.echo(f"bare openai client : {r.bare_client_s:.2f} s  ({r.client_overhead_ms_per_item:.2f} ms/item over ideal)")
    typer.echo(f"tunelab eval       : {r.harness_s:.2f} s  ({r.overhead_ms_per_item:.2f} ms/item over ideal; "
               f"{r.harness_s / r.bare_client_s:.2f}x the bare client) provider calls={r.provider_calls}")
    typer.echo(f"cached rerun       : {r.cached_rerun_s:.2f} s  provider calls={r.rerun_calls}")
    verdict = "meets" if r.overhead_ms_per_item <= 2.0 else "MISSES"
    typer.echo(f"harness overhead {r.overhead_ms_per_item:.2f} ms/item {verdict} the 2 ms/item target")


def _print_summary(store, run_id: str) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from tunelab.evals.summary import judge_health, metric_names_of, summarize

    cfg = store.run_config(run_id)
    rows = store.results(run_id)
    summaries = summarize(rows, metric_names_of(cfg))
    metric_ids = sorted({m for s in summaries for m in s.metrics})
    judge_ids = sorted({j for s in summaries for j in s.judges})
    table = Table(title=f"run {run_id}: mean [95% CI] · outputs without a value")
    for col in ["prompt @ provider", "n", "err", *metric_ids, *(f"judge {j}" for j in judge_ids),
                "pass", "p50 ms", "p95 ms", "tokens in/out", "cost $"]:
        table.add_column(col)
    for s in summaries:
        table.add_row(
            s.variant, str(s.n), str(s.errors), *(_fig(s.metrics.get(m)) for m in metric_ids),
            *(_fig(s.judges.get(j)) for j in judge_ids),
            "" if s.pass_rate is None else f"{100 * s.pass_rate:.0f}%",
            "" if s.latency_p50 is None else f"{1000 * s.latency_p50:.0f}",
            "" if s.latency_p95 is None else f"{1000 * s.latency_p95:.0f}",
            f"{s.prompt_tokens}/{s.completion_tokens}", "" if s.cost is None else f"{s.cost:.4f}")
    Console(width=200).print(table)
    err = Console(stderr=True)
    for h in judge_health(rows, cfg):
        if h.flagged:
            err.print(f"[bold red]WARNING:[/] {h.warning()}", highlight=False)


def _selected_rows(store, run_id: str, variants: list[str] | None, metrics: list[str] | None):  # type: ignore[no-untyped-def]
    """A run's rows restricted to matching variants and named measures; unknown names are errors."""
    from tunelab.evals.selection import RunNames, select_rows

    run = store.resolve_run(run_id)
    rows = store.results(run)
    return select_rows(rows, RunNames.of(rows, store.run_config(run), f"run {run}"), variants, metrics)


def _fig(figure) -> str:  # type: ignore[no-untyped-def]
    return "" if figure is None else figure.text()


def _est(e) -> str:  # type: ignore[no-untyped-def]
    return "-" if e is None else f"{e.mean:.4g} [{e.low:.3g}, {e.high:.3g}]"


class _errors:
    """Turn EvalError into a one-line message and exit code 2, not a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:  # type: ignore[no-untyped-def]
        if exc_type is not None and issubclass(exc_type, EvalError):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        return False
