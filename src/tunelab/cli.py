"""The `tunelab` command. Thin by design: each package owns its commands in
`tunelab/<package>/commands.py`, which exposes `register(app, bench)`; this file
only collects them."""

from __future__ import annotations

import importlib

import typer

from tunelab import __version__
from tunelab.oracles import install_hint, missing_oracles

app = typer.Typer(
    name="tunelab",
    help="Make an LLM application good and cheap, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench = typer.Typer(help="Benchmarks: tunelab side by side with the reference, as ratios.", no_args_is_help=True)
app.add_typer(bench, name="bench")


@bench.callback()
def _bench_oracles(ctx: typer.Context) -> None:
    missing = missing_oracles(ctx.invoked_subcommand)
    if missing:
        typer.echo(install_hint(ctx.invoked_subcommand, missing), err=True)
        raise typer.Exit(2)


# One line per package that contributes commands.
COMMAND_MODULES = (
    "tunelab.prompts.commands",
    "tunelab.models.commands",
    "tunelab.train.commands",
    "tunelab.evals.commands",
    "tunelab.lora.commands",
    "tunelab.review.commands",
    "tunelab.engine.commands",
    "tunelab.serve.commands",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tunelab {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Prompts, evaluation, human review, LoRA tuning and serving in one tool."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app, bench)
