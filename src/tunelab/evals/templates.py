"""Rendering prompts for rows, and linting them, before any provider call.

A prompt is Jinja (StrictUndefined, the environment of prompts/jinja_env.py): a
`template` string, a `messages` list whose contents are templates, or a `file`.
Every row is rendered up front so a missing variable stops the run with file,
line and variable name and zero calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from tunelab.evals.config import EvalConfig, PromptConfig
from tunelab.evals.dataset import Row
from tunelab.evals.errors import EvalError
from tunelab.prompts.errors import PromptError
from tunelab.prompts.finding import Finding
from tunelab.prompts.jinja_env import compile_template
from tunelab.prompts.linter import lint_text
from tunelab.prompts.prompt_file import PromptFile, load_prompt
from tunelab.prompts.render import render

# A dataset row lacks a variable: the fix is in the data (or the template), not a CLI flag.
DATASET_HINT = "add '{name}' to every dataset row (a JSONL key or a CSV column), or remove it from the prompt"

@dataclass
class CompiledPrompt:
    id: str
    source: str                                   # where the text came from, for messages
    parts: list[tuple[str, jinja2.Template, set[str]]]   # (role, template, variables it reads)
    prompt_file: PromptFile | None = None         # rendered by tunelab.prompts
    params: dict[str, Any] = field(default_factory=dict)   # the prompt file's params, then the config entry's

    def render(self, row: Row) -> list[dict[str, str]]:
        if self.prompt_file is not None:
            return self._render_file(row)
        messages = []
        for role, template, names in self.parts:
            missing = sorted(names - row.vars.keys())
            if missing:
                raise EvalError(f"{row.source}:{row.line}: row {row.id!r} has no variable {missing[0]!r} "
                                f"used by prompt {self.id!r} ({self.source}); "
                                + DATASET_HINT.format(name=missing[0]))
            try:
                messages.append({"role": role, "content": template.render(row.vars)})
            except jinja2.UndefinedError as exc:  # e.g. an attribute of a variable
                raise EvalError(f"{row.source}:{row.line}: row {row.id!r}, prompt {self.id!r}: {exc.message}") from None
            except Exception as exc:  # noqa: BLE001 - template runtime errors are user input errors
                raise EvalError(f"{row.source}:{row.line}: row {row.id!r}, prompt {self.id!r}: {exc}") from None
        return messages

    def _render_file(self, row: Row) -> list[dict[str, str]]:
        try:
            out = render(self.prompt_file, row.vars, missing_hint=DATASET_HINT)
        except PromptError as exc:
            raise EvalError(f"{row.source}:{row.line}: row {row.id!r}, prompt {self.id!r}: {exc}") from None
        return [{"role": "user", "content": out}] if isinstance(out, str) else [dict(m) for m in out]


def compile_prompts(cfg: EvalConfig) -> list[CompiledPrompt]:
    return [_compile(p, cfg, i) for i, p in enumerate(cfg.prompts)]


# Sampling params are merged in this order, later winning: the provider's `params`, the
# prompt file's front-matter `params`, the config's `prompts[i].params`. The prompt knows its
# own stop sequences and answer length; the provider only sets defaults. A prompt file's
# `model` is dropped: the provider decides the model.
def effective_params(provider_params: dict[str, Any], prompt: CompiledPrompt) -> dict[str, Any]:
    return {**provider_params, **prompt.params}


def render_all(prompts: list[CompiledPrompt], rows: list[Row]) -> dict[tuple[str, str], list[dict[str, str]]]:
    """(row id, prompt id) -> chat messages. Raises on the first bad row."""
    return {(row.id, p.id): p.render(row) for row in rows for p in prompts}


def prompt_texts(cfg: EvalConfig) -> list[tuple[str, str, str]]:
    """(prompt id, path for messages, text) for the linter."""
    out = []
    for i, p in enumerate(cfg.prompts):
        if p.file:
            path = cfg.resolve(p.file)
            out.append((p.id, str(path), _read(path, cfg, i)))
        elif p.template is not None:
            out.append((p.id, f"{cfg.source}#prompts[{i}]", p.template))
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in p.messages or [])
            out.append((p.id, f"{cfg.source}#prompts[{i}]", text))
    return out


def lint_prompts(cfg: EvalConfig, rows: list[Row] | None = None) -> list[Finding]:
    """Findings from `tunelab.prompts.lint_text` for every prompt, told which
    variables the dataset provides and (with a single evaluated provider) its
    sampling params."""
    variables = set().union(*(r.vars.keys() for r in rows)) if rows else None
    evaluated = [p for p in cfg.providers if not p.judge_only]
    params = dict(evaluated[0].params) if len(evaluated) == 1 else None
    findings = []
    for _prompt_id, path, text in prompt_texts(cfg):
        findings.extend(lint_text(text, path=path, params=params, variables=variables))
    return findings


def _compile(p: PromptConfig, cfg: EvalConfig, index: int) -> CompiledPrompt:
    where = f"{cfg.source}: prompts[{index}]"
    if p.file:
        path = cfg.resolve(p.file)
        if not path.is_file():
            raise EvalError(f"{cfg.source}: prompts[{index}].file: {path} not found")
        prompt_file = _load_prompt_file(path)
        file_params = {k: v for k, v in (prompt_file.params or {}).items() if k != "model"}
        return CompiledPrompt(p.id, str(path), [], prompt_file=prompt_file, params={**file_params, **p.params})
    if p.template is not None:
        return CompiledPrompt(p.id, where, [("user", *_template(p.template, where + ".template"))],
                              params=dict(p.params))
    return CompiledPrompt(p.id, where, [(m["role"], *_template(str(m["content"]), f"{where}.messages[{k}]"))
                                        for k, m in enumerate(p.messages or [])], params=dict(p.params))


def _template(text: str, where: str) -> tuple[jinja2.Template, set[str]]:
    try:
        return compile_template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise EvalError(f"{where}: line {exc.lineno} of the template: {exc.message}") from None


def _load_prompt_file(path: Path) -> PromptFile:
    """A prompt file through `tunelab.prompts`: front matter, chat messages, few-shot examples, params."""
    try:
        return load_prompt(path)
    except PromptError as exc:
        raise EvalError(str(exc)) from None


def _read(path: Path, cfg: EvalConfig, index: int) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EvalError(f"{cfg.source}: prompts[{index}].file: {path} not found") from None
