"""Running the rules over prompts: text, files and directory trees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from tunelab.prompts.config import LintConfig, find_config, inline_disables
from tunelab.prompts.errors import PromptError
from tunelab.prompts.finding import Finding
from tunelab.prompts.prompt_file import (
    TEXT_SUFFIXES, YAML_SUFFIXES, PromptFile, load_prompt, looks_like_prompt_yaml, parse_text_prompt, parse_yaml_prompt,
)
from tunelab.prompts.placeholders import find_placeholders
from tunelab.prompts.reading import read_prompt
from tunelab.prompts.rules import RULES, LintContext

SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache", ".tox", "build", "dist"}
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def lint_text(text: str, *, path: str = "<config>", task: str | None = None, params: dict[str, Any] | None = None,
              variables: set[str] | None = None, config: LintConfig | None = None) -> list[Finding]:
    """Lint prompt text (a YAML prompt when `path` ends in .yaml/.yml, else a template).

    `task`, `params` and `variables` let a caller such as `tunelab eval` say what the
    file cannot: the task, the sampling parameters, and the variables it will provide."""
    prompt = parse_yaml_prompt(text, path) if path.lower().endswith(YAML_SUFFIXES) else parse_text_prompt(text, path)
    return lint_prompt(prompt, task=task, params=params, variables=variables, config=config)


def lint_file(path: str | Path, *, config: LintConfig | None = None) -> list[Finding]:
    """Lint one prompt file; raises PromptError when it cannot be loaded."""
    prompt = load_prompt(path)
    return lint_prompt(prompt, config=config if config is not None else find_config(path))


def lint_prompt(prompt: PromptFile, *, task: str | None = None, params: dict[str, Any] | None = None,
                variables: Iterable[str] | None = None, config: LintConfig | None = None) -> list[Finding]:
    config = config or LintConfig()
    reading = read_prompt(prompt, task)
    ctx = LintContext(reading, prompt.path, {**prompt.params, **(params or {})},
                      set(variables) if variables is not None else None)
    whole_file, per_line = inline_disables(prompt.source)
    findings = []
    for rule in RULES:
        if rule.id in config.disable or rule.id in whole_file:
            continue
        for finding in rule.check(ctx):
            if rule.id in per_line.get(finding.line, ()):
                continue
            if rule.id in config.severity:
                finding.severity = config.severity[rule.id]
            findings.append(finding)
    return sorted(findings, key=lambda f: (f.line, f.column, _SEVERITY_ORDER[f.severity], f.rule))


def lint_paths(paths: Iterable[str | Path]) -> list[Finding]:
    """Lint files and directory trees; a file that cannot be loaded becomes an error finding, not a crash."""
    findings = []
    for file in prompt_files(paths):
        try:
            findings += lint_file(file)
        except PromptError as exc:
            findings.append(load_error_finding(str(file), exc))
    return findings


def prompt_files(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                for name in sorted(names):
                    candidate = Path(root) / name
                    suffix = candidate.suffix.lower()
                    if suffix == ".prompt" or (suffix in TEXT_SUFFIXES and _is_prompt_txt(candidate)):
                        files.append(candidate)
                    elif suffix in YAML_SUFFIXES and _is_prompt_yaml(candidate):
                        files.append(candidate)
        elif path.exists():
            files.append(path)
        else:
            raise PromptError("no such file or directory", path=str(path))
    return files


def load_error_finding(path: str, exc: PromptError) -> Finding:
    message = str(exc)
    prefix = f"{path}:{exc.line}: " if exc.line else f"{path}: "
    message = message[len(prefix):] if message.startswith(prefix) else message
    line = exc.line or 1
    return Finding(path=path, rule="template", severity="error", practice="template", message=message,
                   line=line, column=1, end_line=line, end_column=2, fix="Fix the file so it loads.",
                   title="Template is well-formed")


def _is_prompt_txt(path: Path) -> bool:
    # A tree holds many .txt files that are not prompts (requirements, licences, notes):
    # a walk takes one only under a prompts/ folder or when it inserts a variable.
    if "prompts" in path.parts[:-1]:
        return True
    try:
        return bool(find_placeholders(path.read_text(encoding="utf-8")[:100_000]))
    except (OSError, UnicodeDecodeError):
        return False


def _is_prompt_yaml(path: Path) -> bool:
    try:
        return looks_like_prompt_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return False
