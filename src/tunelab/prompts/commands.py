"""`tunelab lint` and `tunelab prompt render`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from tunelab.prompts.errors import PromptError
from tunelab.prompts.finding import SEVERITIES

FORMATS = ("text", "json", "sarif")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("lint")(lint_command)
    prompt = typer.Typer(help="Prompt files: render them with variables and few-shot examples.", no_args_is_help=True)
    prompt.command("render")(render_command)
    app.add_typer(prompt, name="prompt")


def lint_command(
    paths: list[Path] = typer.Argument(..., help="Prompt files (.prompt, .txt, .yaml) or directories to search."),
    format: str = typer.Option("text", "--format", help="Output: text (underlined spans), json or sarif."),
    fail_on: str = typer.Option("error", "--fail-on", help="Exit 1 when a finding this severe or worse exists: error, warning or info."),
    fix: bool = typer.Option(False, "--fix", help="Apply mechanical fixes (fence variables, move instructions up) in place."),
) -> None:
    """Check prompts against OpenAI's prompt-engineering practices (docs/lint-rules.md)."""
    from tunelab.prompts.fix import fix_file
    from tunelab.prompts.linter import lint_paths, prompt_files
    from tunelab.prompts.report import print_text, to_json, to_sarif

    if format not in FORMATS:
        _die(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if fail_on not in SEVERITIES:
        _die(f"--fail-on must be one of {', '.join(SEVERITIES)}, got {fail_on!r}")
    try:
        if fix:
            for file in prompt_files(paths):
                try:
                    applied = fix_file(file)
                except PromptError as exc:
                    typer.echo(f"not fixed: {exc}", err=True)
                    continue
                if applied:
                    typer.echo(f"fixed {applied} finding(s) in {file}", err=True)
        findings = lint_paths(paths)
    except PromptError as exc:
        _die(str(exc))
    if format == "json":
        typer.echo(to_json(findings))
    elif format == "sarif":
        typer.echo(json.dumps(to_sarif(findings), indent=2))
    else:
        print_text(findings, Console(highlight=False, soft_wrap=True))
    worst = SEVERITIES.index(fail_on)
    if any(SEVERITIES.index(f.severity) <= worst for f in findings):
        raise typer.Exit(1)


def render_command(
    file: Path = typer.Argument(..., help="A prompt file."),
    var: list[str] = typer.Option([], "--var", help="A variable as name=value; repeat for more."),
    examples: int = typer.Option(None, "--examples", help="Use only the first N few-shot examples."),
) -> None:
    """Render a prompt file: a template prints as text, a messages: prompt as JSON."""
    from tunelab.prompts.prompt_file import load_prompt
    from tunelab.prompts.render import render

    values = {}
    for item in var:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            _die(f"--var expects name=value, got {item!r}")
        values[name.strip()] = value
    try:
        result = render(load_prompt(file), values, examples=examples)
    except PromptError as exc:
        _die(str(exc))
    if isinstance(result, str):
        sys.stdout.write(result if result.endswith("\n") else result + "\n")
    else:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


def _die(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)
