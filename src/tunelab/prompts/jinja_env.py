"""The one Jinja environment prompts are rendered in, by `tunelab prompt render`, the linter and evals.

StrictUndefined: a missing variable is an error, never a silently empty slot in a prompt sent
to a model. The trailing newline is kept because it is part of the prompt, and nothing is
HTML-escaped because the output is text for a model, not a page.
"""

from __future__ import annotations

import jinja2
import jinja2.meta

ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


def compile_template(source: str) -> tuple[jinja2.Template, set[str]]:
    """The template and the variables it reads from outside. Raises jinja2.TemplateSyntaxError."""
    parsed = ENV.parse(source)
    return ENV.from_string(source), set(jinja2.meta.find_undeclared_variables(parsed))
