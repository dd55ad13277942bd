"""Where a prompt inserts variables.

Two spellings are accepted: Jinja's `{{ var }}` and the single-brace `{var}` that
OpenAI's guide and `str.format` templates use. Single-brace placeholders are turned
into Jinja before rendering so that one engine (with StrictUndefined) handles both."""

from __future__ import annotations

import re
from dataclasses import dataclass

# `{{ name }}`, `{{ name.attr }}`, `{{ name | filter }}`: the first identifier is the variable.
JINJA_VAR = re.compile(r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*)[^{}]*?-?\}\}")
# `{name}` not part of `{{`/`}}`, so JSON such as {"a": 1} and Jinja blocks are left alone.
SINGLE_VAR = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)
JINJA_BLOCK = re.compile(r"\{%-?.*?-?%\}", re.S)
LOOP_OR_SET = re.compile(r"\{%-?\s*(?:for\s+([A-Za-z_]\w*)(?:\s*,\s*([A-Za-z_]\w*))?\s+in|set\s+([A-Za-z_]\w*))")


@dataclass(frozen=True)
class Placeholder:
    name: str
    start: int  # offsets into the text the placeholder was found in
    end: int


def find_placeholders(text: str) -> list[Placeholder]:
    """Every variable insertion in `text`, in order, excluding names bound inside the template."""
    local = set()
    for m in LOOP_OR_SET.finditer(text):
        local.update(g for g in m.groups() if g)
    found = [Placeholder(m.group(1), m.start(), m.end()) for m in JINJA_VAR.finditer(text)]
    blanked = JINJA_VAR.sub(lambda m: " " * len(m.group(0)), text)
    found += [Placeholder(m.group(1), m.start(), m.end()) for m in SINGLE_VAR.finditer(blanked)]
    return sorted((p for p in found if p.name not in local and p.name not in ("loop",)), key=lambda p: p.start)


def to_jinja(text: str) -> str:
    """Rewrite single-brace placeholders as Jinja ones, leaving everything else as written."""
    protected = []

    def keep(m: re.Match) -> str:
        protected.append(m.group(0))
        return f"\x00{len(protected) - 1}\x00"

    # Jinja expressions, blocks and comments stay untouched; only bare {name} changes.
    masked = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", keep, text, flags=re.S)
    masked = SINGLE_VAR.sub(lambda m: "{{ " + m.group(1) + " }}", masked)
    return re.sub(r"\x00(\d+)\x00", lambda m: protected[int(m.group(1))], masked)
