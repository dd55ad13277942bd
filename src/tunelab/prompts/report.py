"""Presenting findings: rich text with the span underlined, JSON, and SARIF 2.1.0."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.text import Text

from tunelab import __version__
from tunelab.prompts.finding import Finding
from tunelab.prompts.rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold blue"}


def print_text(findings: list[Finding], console: Console) -> None:
    sources: dict[str, list[str]] = {}
    for f in findings:
        if f.path not in sources:
            try:
                sources[f.path] = Path(f.path).read_text(encoding="utf-8").split("\n")
            except (OSError, UnicodeDecodeError):
                sources[f.path] = []
        practice = f"practice {f.practice}" if isinstance(f.practice, int) else f.practice
        head = Text()
        head.append(f"{f.path}:{f.line}:{f.column}: ", style="bold")
        head.append(f.severity, style=_STYLE[f.severity])
        head.append(f" {f.rule} ", style="bold")
        head.append(f"({practice}) ", style="dim")
        head.append(f.message)
        console.print(head)
        lines = sources[f.path]
        if 0 < f.line <= len(lines):
            source = lines[f.line - 1]
            start = max(0, f.column - 1)
            end = len(source) if f.end_line > f.line else max(start + 1, min(len(source), f.end_column - 1))
            shown = Text(f"  {f.line:>4} | ")
            shown.append(source[:start])
            shown.append(source[start:end], style="underline " + _STYLE[f.severity])
            shown.append(source[end:])
            console.print(shown)
            # Carets too, so the span is visible without colour (CI logs, pipes).
            console.print(Text(" " * (len(f"  {f.line:>4} | ") + start) + "^" * max(1, end - start), style=_STYLE[f.severity]))
        console.print(Text(f"  fix: {f.fix}", style="green"))
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    files = len({f.path for f in findings})
    if findings:
        console.print(f"{len(findings)} finding(s) in {files} file(s): "
                      f"{counts['error']} error, {counts['warning']} warning, {counts['info']} info")
    else:
        console.print("No findings.")


def to_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2)


def to_sarif(findings: list[Finding]) -> dict:
    index = {rule.id: i for i, rule in enumerate(RULES)}
    rules = [{
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split("-")),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.summary},
        "helpUri": f"https://github.com/tunelab/tunelab/blob/main/docs/lint-rules.md#{rule.id}",
        "defaultConfiguration": {"level": SARIF_LEVEL[rule.severity]},
        "properties": {"practice": str(rule.practice)},
    } for rule in RULES]
    results = []
    for f in findings:
        results.append({
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": SARIF_LEVEL[f.severity],
            "message": {"text": f"{f.message}. Fix: {f.fix}"},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": Path(f.path).as_posix()},
                "region": {"startLine": f.line, "startColumn": f.column,
                           "endLine": f.end_line, "endColumn": max(f.end_column, f.column)},
            }}],
        })
    return {
        "version": "2.1.0",
        "$schema": SARIF_SCHEMA,
        "runs": [{
            "tool": {"driver": {"name": "tunelab", "version": __version__, "informationUri": "https://github.com/tunelab/tunelab",
                                "rules": rules}},
            "results": results,
        }],
    }
