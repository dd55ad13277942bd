"""`python -m tunelab.demo` (what `make demo` runs); `--help` lists the knobs."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.demo import HOSTED, MACHINE, MACHINE_PRICE_PER_HOUR, MODEL, QUALITY_BAR, DemoConfig, run_demo
from tunelab.demo.task import TuneSettings
from tunelab.demo.wordnet import DATA_NOUN
from tunelab.evals.ladder import HostedPrice


def main(
    model: str = typer.Option(MODEL, help="Built-in name, GGUF file or HF checkpoint directory."),
    wordnet: Path = typer.Option(DATA_NOUN, help="WordNet's data.noun (wndb format)."),
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for every file the demo writes."),
    held_out_per_label: int = typer.Option(25, help="Held-out entries per category (8 categories)."),
    train_per_label: int = typer.Option(150, help="Training entries per category."),
    steps: int = typer.Option(TuneSettings.steps, help="LoRA training steps."),
    max_seq_len: int = typer.Option(TuneSettings.max_seq_len, help="Longest training row, in tokens."),
    bar: float = typer.Option(QUALITY_BAR, help="Accuracy a rung must reach to be good enough."),
    machine: str = typer.Option(MACHINE, help="This machine, in words, for the table."),
    machine_price: float = typer.Option(MACHINE_PRICE_PER_HOUR, help="This machine's price in $/hour."),
    hosted_model: str = typer.Option(HOSTED.model, help="Hosted API model to compare with."),
    hosted_input_price: float = typer.Option(HOSTED.input_per_1m, help="Its list price, $ per 1M input tokens."),
    hosted_output_price: float = typer.Option(HOSTED.output_per_1m, help="Its list price, $ per 1M output tokens."),
    hosted_price_date: str = typer.Option(HOSTED.as_of, help="When that price was read."),
    validation: bool = typer.Option(True, help="End with which metric agrees with people (shipped ratings)."),
) -> None:
    """The ladder (zero-shot -> few-shot -> LoRA) on WordNet noun categories, on this machine."""
    run_demo(DemoConfig(
        model=model, wordnet=wordnet, folder=out, held_out_per_label=held_out_per_label,
        train_per_label=train_per_label, tune=TuneSettings(steps=steps, max_seq_len=max_seq_len), bar=bar, machine=machine,
        machine_price_per_hour=machine_price,
        hosted=HostedPrice(hosted_model, hosted_input_price, hosted_output_price, hosted_price_date),
        validation=validation,
    ))  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
