"""Rendering a prompt file with variables and few-shot examples.

Jinja runs with StrictUndefined (prompts/jinja_env.py): a missing variable is an error
naming the file and the variable, never a silently empty slot in a prompt sent to a model."""

from __future__ import annotations

from typing import Any

import jinja2

from tunelab.prompts.errors import PromptError
from tunelab.prompts.jinja_env import compile_template
from tunelab.prompts.placeholders import find_placeholders, to_jinja
from tunelab.prompts.prompt_file import PromptFile

MISSING_HINT = "pass it with --var {name}=..."   # `tunelab prompt render`'s way to give a variable


def render(prompt_file: PromptFile, variables: dict[str, Any], examples: int | None = None, *,
           missing_hint: str = MISSING_HINT) -> str | list[dict[str, str]]:
    """A template renders to a string; a `messages:` prompt to a list of {role, content}.

    `examples` keeps the first N few-shot examples (None keeps all, 0 drops them).
    `missing_hint` ends the error for an undefined variable ({name} is filled in): callers
    whose variables come from elsewhere (an eval's dataset rows) say where to add it."""
    chosen = prompt_file.examples if examples is None else prompt_file.examples[: max(0, examples)]
    values = dict(prompt_file.variables or {})
    values = {k: v for k, v in values.items() if v is not None}
    values.update(variables)
    if prompt_file.messages is None:
        template = prompt_file.template or ""
        uses_examples = any(p.name == "examples" for p in find_placeholders(template))
        block = format_examples(chosen, prompt_file.example_separator)
        if uses_examples:
            values.setdefault("examples", block)
        elif block:
            template = _insert_before_last_paragraph(template, block, prompt_file.example_separator)
        return _render_text(template, values, prompt_file.path, prompt_file.segments[0].origins[0][0], missing_hint)
    messages = [
        {"role": m["role"], "content": _render_text(m["content"], values, prompt_file.path, seg.origins[0][0],
                                                    missing_hint)}
        for m, seg in zip(prompt_file.messages, prompt_file.segments)
    ]
    # Chat few-shot: each example is a user turn and the assistant's answer, placed just
    # before the final user turn so the real request stays the open slot.
    shots = []
    for example in chosen:
        keys = list(example)
        user = example.get("input", example[keys[0]])
        answer = example.get("output", example[keys[-1]])
        shots += [{"role": "user", "content": str(user)}, {"role": "assistant", "content": str(answer)}]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages))
    return messages[:last_user] + shots + messages[last_user:]


def format_examples(examples: list[dict[str, Any]], separator: str = "\n\n") -> str:
    """Each example as `Key: value` lines, examples joined by one separator, so every shot looks alike."""
    blocks = []
    for example in examples:
        blocks.append("\n".join(f"{_label(k)}: {str(v).strip()}" for k, v in example.items()))
    return separator.join(blocks)


def _label(key: str) -> str:
    key = str(key).replace("_", " ")
    return key[:1].upper() + key[1:]


def _insert_before_last_paragraph(template: str, block: str, separator: str) -> str:
    # The last paragraph is the open slot ("Text: {{ text }}\nSentiment:"); examples go
    # right above it. A one-paragraph template gets the examples first.
    body = template.rstrip("\n")
    tail = template[len(body):]
    cut = body.rfind("\n\n")
    if cut < 0:
        return block + separator + template
    return body[:cut] + "\n\n" + block + separator + body[cut + 2:] + tail


def _render_text(text: str, values: dict[str, Any], path: str, first_line: int, missing_hint: str = MISSING_HINT) -> str:
    source = to_jinja(text)
    try:
        template, variables = compile_template(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(f"template syntax error: {exc.message}", path=path, line=first_line + (exc.lineno or 1) - 1) from exc
    missing = sorted(variables - set(values))
    if missing:
        name = missing[0]
        line = first_line
        for p in find_placeholders(text):
            if p.name == name:
                line = first_line + text.count("\n", 0, p.start)
                break
        others = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise PromptError(f"variable '{name}' is undefined; {missing_hint.format(name=name)}{others}", path=path, line=line)
    try:
        return template.render(**values)
    except jinja2.UndefinedError as exc:
        raise PromptError(f"undefined value while rendering: {exc.message}", path=path, line=first_line) from exc
