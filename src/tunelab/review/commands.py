"""`tunelab review ...` and `tunelab agree`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

from tunelab.review.errors import ReviewError

DB_HELP = "SQLite file shared with `tunelab eval` (review tables are prefixed review_)."


def register(app: typer.Typer, bench: typer.Typer) -> None:
    review = typer.Typer(help="Human review: blinded rating tasks for people.", no_args_is_help=True)
    app.add_typer(review, name="review")
    review.command("create")(create_command)
    review.command("add-rater")(add_rater_command)
    review.command("remove-rater")(remove_rater_command)
    review.command("deadline")(deadline_command)
    review.command("admin-link")(admin_link_command)
    review.command("serve")(serve_command)
    review.command("status")(status_command)
    review.command("export")(export_command)
    review.command("import")(import_command)
    app.command("agree")(agree_command)


def create_command(
    name: str = typer.Argument(..., help="Task name."),
    run: Optional[str] = typer.Option(None, "--run", help="Eval run id (or 'latest') whose outputs to review."),
    from_file: Optional[Path] = typer.Option(None, "--from", help="items.jsonl: id, input, output (or output_a, output_b)."),
    pairwise: Optional[tuple[str, str]] = typer.Option(None, "--pairwise", help="Compare two variants A B."),
    dimensions: Optional[str] = typer.Option(None, "--dimensions", help="Comma-separated, e.g. correctness,helpfulness,creativity,humour,engagement."),
    scale: str = typer.Option("1-5", "--scale", help="Integer rating scale LOW-HIGH within 0-9."),
    raters_per_item: int = typer.Option(2, "--raters-per-item", help="K raters per item."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Review a random sample of N items."),
    seed: int = typer.Option(0, "--seed", help="Seed for --sample."),
    guidelines: Optional[Path] = typer.Option(None, "--guidelines", help="Markdown file of instructions, shown to raters before the first item."),
    describe: list[str] = typer.Option([], "--describe", help="DIMENSION=what it asks (repeatable); required for dimensions without a built-in description."),
    deadline: Optional[str] = typer.Option(None, "--deadline", help="ISO date or time (UTC) after which answers are closed."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Create a review task from an eval run or an items file (items may carry gold answers for calibration)."""
    from tunelab.review.runs import items_from_run
    from tunelab.review.store import ReviewStore
    from tunelab.review.tasks import (TaskSpec, create_task, load_items_jsonl, parse_deadline,
                                      parse_descriptions, parse_dimensions, parse_scale)

    def go():
        if (run is None) == (from_file is None):
            raise ReviewError("give exactly one of --run RUN_ID or --from items.jsonl")
        if run is not None:
            run_id, items = items_from_run(db, run, tuple(pairwise) if pairwise else None)
            source = f"run:{run_id}"
        else:
            items, source = load_items_jsonl(from_file), f"file:{from_file}"
        is_pair = bool(pairwise) or any(it.output_b is not None for it in items)
        spec = TaskSpec(name, parse_dimensions(dimensions), parse_scale(scale), raters_per_item, is_pair,
                        sample, seed, _guidelines_text(guidelines), parse_descriptions(describe),
                        None if deadline is None else parse_deadline(deadline))
        store = ReviewStore(db)
        task = create_task(store, spec, items, source)
        n = len(store.items(name))
        typer.echo(f"created review task {name!r}: {n} items, {task.mode}, dimensions "
                   f"{', '.join(task.dimensions)}, scale {task.scale_min}-{task.scale_max}, "
                   f"{task.raters_per_item} raters per item")
        typer.echo(f"next: tunelab review add-rater {name} RATER --db {db}")

    _run(go)


def add_rater_command(
    name: str = typer.Argument(...),
    rater: str = typer.Argument(...),
    base_url: str = typer.Option("http://127.0.0.1:8100", "--base-url", help="Where `review serve` is reachable."),
    expires_days: float = typer.Option(14.0, "--expires-days", help="The link expires after this many days."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Add a rater (or re-issue their link, ending their sessions) and print their personal sign-in link.
    A link signs in at most 5 times; a signed-in browser clicking it again goes straight in."""
    from tunelab.review.auth import add_rater
    from tunelab.review.store import ReviewStore

    _run(lambda: typer.echo(add_rater(ReviewStore(db), name, rater, base_url, expires_days)))


def remove_rater_command(
    name: str = typer.Argument(...),
    rater: str = typer.Argument(...),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Remove a rater: their link and sessions end, their submitted answers stay, their open items go to others."""
    from tunelab.review.store import ReviewStore
    from tunelab.review.tasks import rebalance

    def go():
        store = ReviewStore(db)
        store.remove_rater(name, rater)
        loads = rebalance(store, name)
        typer.echo(f"removed {rater!r} from {name!r}; items per rater now: "
                   + (", ".join(f"{r} {n}" for r, n in sorted(loads.items())) or "none"))

    _run(go)


def deadline_command(
    name: str = typer.Argument(...),
    when: str = typer.Argument(..., help="ISO date or time (UTC), or 'none' to lift it."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Set or lift the task's deadline; after it, answers are closed."""
    from tunelab.review.store import ReviewStore
    from tunelab.review.tasks import parse_deadline

    def go():
        ReviewStore(db).set_deadline(name, None if when == "none" else parse_deadline(when))
        typer.echo(f"{name!r}: " + ("no deadline" if when == "none" else f"answers close at {when} (UTC unless given)"))

    _run(go)


def admin_link_command(
    base_url: str = typer.Option("http://127.0.0.1:8100", "--base-url", help="Where `review serve` is reachable."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Print a single-use owner sign-in link (valid for an hour) for the dashboard."""
    from tunelab.review.auth import admin_link
    from tunelab.review.store import ReviewStore

    _run(lambda: typer.echo(admin_link(ReviewStore(db), base_url)))


def serve_command(
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8100, "--port"),
) -> None:
    """Serve the rating app and print a single-use owner sign-in link. The JSON API's admin token
    comes from $TUNELAB_REVIEW_ADMIN_TOKEN, or is generated and printed."""
    import uvicorn

    from tunelab.review.app import create_app
    from tunelab.review.auth import admin_link

    token = os.environ.get("TUNELAB_REVIEW_ADMIN_TOKEN") or secrets.token_urlsafe(32)
    app_ = _run(lambda: create_app(db, token))
    typer.echo(f"owner dashboard (link works once, for an hour): {admin_link(app_.state.store, f'http://{host}:{port}')}")
    if "TUNELAB_REVIEW_ADMIN_TOKEN" not in os.environ:
        typer.echo(f"admin API: header 'Authorization: Bearer {token}'")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def status_command(name: str = typer.Argument(...), db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP)) -> None:
    """Progress per rater."""
    from rich.console import Console
    from rich.table import Table

    from tunelab.review.store import ReviewStore
    from tunelab.review.tasks import progress

    def go():
        store = ReviewStore(db)
        task = store.task(name)
        t = Table(title=f"{name}: {len(store.items(name))} items, {task.raters_per_item} raters per item")
        for col in ("rater", "assigned", "rated", "skipped", "flagged", "left"):
            t.add_column(col)
        for p in progress(store, name):
            t.add_row(p["rater"] + ("" if p["active"] else " (removed)"), str(p["assigned"]), str(p["rated"]),
                      str(p["skipped"]), str(p["flagged"]), str(p["left"]))
        Console().print(t)

    _run(go)


def export_command(
    name: str = typer.Argument(...),
    fmt: str = typer.Option("csv", "--format", help="csv or jsonl"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="File to write (default: stdout)."),
    history: bool = typer.Option(False, "--history", help="Every action, with earlier answers marked 'replaced'."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Ratings in long format (item_id, rater, dimension, score or preference, comment, timestamp) plus
    state (rated, skipped, flagged; with --history also replaced, unskipped, unflagged), reason and seconds."""
    from tunelab.review.export import dumps, export_rows
    from tunelab.review.store import ReviewStore

    def go():
        text = dumps(export_rows(ReviewStore(db), name, history), fmt)
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            typer.echo(text, nl=False)

    _run(go)


def import_command(
    name: str = typer.Argument(...),
    file: Path = typer.Argument(..., help="Long-format CSV or JSONL."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Import human labels gathered elsewhere (same long format as export)."""
    from tunelab.review import longformat
    from tunelab.review.store import ReviewStore

    def go():
        store = ReviewStore(db)
        task = store.task(name)
        rows = longformat.load(file)
        known = {it.item_id for it in store.items(name)}
        for n, r in enumerate(rows, 1):
            if r.item_id not in known:
                raise ReviewError(f"{file}: row {n}: item_id {r.item_id!r} is not in task {name!r}")
            if r.dimension not in task.dimensions:
                raise ReviewError(f"{file}: row {n}: dimension {r.dimension!r} is not one of "
                                  f"{', '.join(task.dimensions)}")
            if task.pairwise != (r.preference is not None):
                want = "preference (A/B/tie)" if task.pairwise else "score"
                raise ReviewError(f"{file}: row {n}: task {name!r} expects a {want}")
            if r.score is not None and not task.scale_min <= r.score <= task.scale_max:
                raise ReviewError(f"{file}: row {n}: score {r.score:g} outside the scale "
                                  f"{task.scale_min}-{task.scale_max}")
        store.submit(name, rows)
        typer.echo(f"imported {len(rows)} ratings into {name!r}")

    _run(go)

def agree_command(
    source: Optional[str] = typer.Argument(None, help="A review task name, or a long-format ratings file "
                                                      "(CSV/JSONL). Omit with --items/--ratings."),
    run: Optional[str] = typer.Option(None, "--run", help="Eval run whose metrics and judges to validate."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Automated scores file: item_id, metric, value."),
    items: Optional[Path] = typer.Option(None, "--items", help="Imported judgments: ITEMS.jsonl with id, input_id, "
                                                               "system, output, reference(s)."),
    ratings: Optional[Path] = typer.Option(None, "--ratings", help="Imported judgments: RATINGS.jsonl with "
                                                                   "item_id, dimension, rater, score."),
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="A tunelab metric to compute on the items "
                                                                      "(repeatable), e.g. rouge_l, embedding."),
    level: Optional[list[str]] = typer.Option(None, "--level", help="item, input or system (repeatable; "
                                                                    "default: all three)."),
    references: Optional[str] = typer.Option(None, "--references", help="How reference-based metrics combine "
                                                                         "several references: mean or max."),
    judge_url: Optional[str] = typer.Option(None, "--judge-url", help="With --items: an OpenAI-compatible "
                                            "endpoint; adds a G-Eval and a rubric judge per dimension."),
    judge_model: str = typer.Option("", "--judge-model", help="Model name for --judge-url."),
    judge_key_env: Optional[str] = typer.Option(None, "--judge-key-env", help="Environment variable holding "
                                                                              "the judge's API key."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write an HTML report with plots."),
    n_boot: Optional[int] = typer.Option(None, "--bootstrap", help="Bootstrap resamples for the 95% intervals "
                                                                   "(default 1000 with --items, else 500)."),
    seed: int = typer.Option(0, "--seed"),
    pass_threshold: Optional[float] = typer.Option(None, "--pass-threshold",
                                                   help="Human mean >= this counts as a pass (default: scale midpoint)."),
    db: Path = typer.Option(Path("tunelab.db"), "--db", help=DB_HELP),
) -> None:
    """Inter-rater agreement, and how well each automated metric agrees with the humans."""
    args = SimpleNamespace(**locals())
    _run(lambda: _agree_imported(args) if items is not None or ratings is not None else _agree_task(args))


def _agree_imported(a: SimpleNamespace) -> None:
    """`--items/--ratings`: imported judgments validated at item, input and system level."""
    from tunelab.review import agreement_report
    from tunelab.review.imported import validate_files
    from tunelab.review.levels import LEVELS, BootConfig

    if a.source is not None or a.run is not None:
        raise ReviewError("--items/--ratings take no task name and no --run")
    if a.items is None or a.ratings is None:
        raise ReviewError("give both --items ITEMS.jsonl and --ratings RATINGS.jsonl")
    for lvl in a.level or []:
        if lvl not in LEVELS:
            raise ReviewError(f"--level: expected item, input or system, got {lvl!r}")
    config = BootConfig(n_boot=a.n_boot or 1000, seed=a.seed, levels=tuple(a.level or LEVELS))
    judge = None
    if a.judge_url:
        judge = (a.judge_url, a.judge_model, os.environ.get(a.judge_key_env, "") if a.judge_key_env else "EMPTY")
    report = validate_files(a.items, a.ratings, a.metric or [], a.scores, config, references=a.references, db=a.db,
                            judge=judge)
    if a.as_json:
        typer.echo(agreement_report.to_json(report))
    else:
        agreement_report.print_levels(report)
    if a.output is not None:
        agreement_report.write_levels_html(report, a.output)
        if not a.as_json:
            typer.echo(f"wrote {a.output}")


def _agree_task(a: SimpleNamespace) -> None:
    """A review task or a long-format ratings file: rater agreement, then each metric against the humans."""
    from tunelab.review import agreement_report
    from tunelab.review.agreement import AgreementConfig, agreement, plot_data

    if a.source is None:
        raise ReviewError("give a review task or ratings file, or --items and --ratings")
    if a.metric or a.level or a.references or a.judge_url:
        raise ReviewError("--metric, --level, --references and --judge-url go with --items/--ratings")
    task, items, ratings, auto = _agree_inputs(a)
    config = AgreementConfig(n_boot=a.n_boot or 500, seed=a.seed, pass_threshold=a.pass_threshold,
                             scale=(task.scale_min, task.scale_max) if task and not task.pairwise else None)
    report = agreement(ratings, auto, config)
    levels = None
    if task is not None and not task.pairwise:   # run-based tasks know each item's input and variant
        from tunelab.review.imported import validate_review_task
        from tunelab.review.levels import BootConfig

        levels = validate_review_task(items, ratings, auto, BootConfig(n_boot=a.n_boot or 500, seed=a.seed))
        for dim, r in report.items():
            r["levels"] = [x for x in (levels or {}).get("correlations", []) if x["dimension"] == dim]
    if a.as_json:
        typer.echo(agreement_report.to_json(report))
    else:
        agreement_report.print_tables(report)
        if levels:
            agreement_report.print_levels(levels)
    if a.output is not None:
        dims, vectors = plot_data(ratings, auto, config)
        agreement_report.write_html(report, a.output, dims, vectors)
        if not a.as_json:
            typer.echo(f"wrote {a.output}")


def _agree_inputs(a: SimpleNamespace) -> tuple:
    """(task or None, items or None, human ratings, automated scores) from a task name or a ratings file."""
    from tunelab.review import longformat
    from tunelab.review.runs import scores_from_run
    from tunelab.review.store import ReviewStore

    task = items = None
    if Path(a.source).is_file():
        ratings = longformat.load(a.source)
    else:
        store = ReviewStore(a.db)
        task = store.task(a.source)
        items = store.items(a.source)
        ratings = store.ratings(a.source)
    auto = []
    if a.scores is not None:
        auto += longformat.load_scores(a.scores)
    if a.run is not None:
        auto += scores_from_run(a.db, a.run, task, items)
    return task, items, ratings, auto


def _guidelines_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read guidelines: {exc.strerror}") from None


def _run(fn):
    try:
        return fn()
    except ReviewError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
