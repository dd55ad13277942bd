"""The template itself: it parses, its delimiters are balanced, and the variables it
uses are the ones provided."""

from __future__ import annotations

import re

import jinja2
import jinja2.meta

from tunelab.prompts.finding import Finding
from tunelab.prompts.jinja_env import ENV
from tunelab.prompts.placeholders import find_placeholders, to_jinja
from tunelab.prompts.rules.base import LintContext, Rule

def template_rule(ctx: LintContext) -> list[Finding]:
    findings = []
    for seg, segment in enumerate(ctx.reading.segments):
        text = segment.text
        try:
            ENV.parse(to_jinja(text))
        except jinja2.TemplateSyntaxError as exc:
            index = max(0, (exc.lineno or 1) - 1)
            start = sum(len(line) + 1 for line in text.split("\n")[:index])
            end = start + len(text.split("\n")[index]) if index < len(text.split("\n")) else start + 1
            findings.append(TEMPLATE.at(ctx, seg, start, end, f"template syntax error: {exc.message}",
                                        "Fix the Jinja syntax: every {{ needs }}, every {% block %} its {% end %}.",
                                        severity="error"))
        findings += _unbalanced(ctx, seg, text)
    findings += _variables(ctx)
    return findings


def _unbalanced(ctx: LintContext, seg: int, text: str) -> list[Finding]:
    findings = []
    tail = text.rstrip()
    for marker in ('"""', "```"):
        starts = [m.start() for m in re.finditer(re.escape(marker), text)]
        if len(starts) % 2 == 0:
            continue
        last = starts[-1]
        if marker == "```" and tail[last:].count("\n") <= 3:
            continue  # an open fence near the end is a deliberate leading fence for the answer (practice 8)
        findings.append(TEMPLATE.at(ctx, seg, last, last + 3, f"unbalanced {marker}: this one is never closed",
                                    f"Close the fenced block with a matching {marker}.", severity="error"))
    opened: dict[str, list[re.Match]] = {}
    for m in re.finditer(r"<(/?)([A-Za-z][\w-]*)(?:\s[^<>]*)?>", text):
        name = m.group(2)
        if not m.group(1):
            opened.setdefault(name, []).append(m)
        elif opened.get(name):
            opened[name].pop()
        else:
            findings.append(TEMPLATE.at(ctx, seg, m.start(), m.end(), f"closing tag </{name}> has no opening <{name}>",
                                        f"Add <{name}> where the fenced text starts, or remove </{name}>.", severity="error"))
    for name, matches in opened.items():
        for m in matches:
            line_start = text.rfind("\n", 0, m.start()) + 1
            line_end = text.find("\n", m.end())
            line = text[line_start:len(text) if line_end < 0 else line_end]
            if line.strip() == m.group(0):  # a tag alone on its line opens a block; inline <slot> is a placeholder
                findings.append(TEMPLATE.at(ctx, seg, m.start(), m.end(), f"<{name}> is never closed",
                                            f"Close it with </{name}> after the fenced text.", severity="error"))
    return findings


def _variables(ctx: LintContext) -> list[Finding]:
    declared = ctx.prompt.variables
    known = ctx.variables
    if declared is None and known is None:
        return []
    provided = set(declared or ()) | set(known or ())
    if ctx.prompt.examples:
        provided.add("examples")
    findings, used = [], set()
    for seg, segment in enumerate(ctx.reading.segments):
        names = {p.name: p for p in reversed(find_placeholders(segment.text))}  # first use of each
        try:
            # Jinja's own analysis also sees names used only in tags, e.g. `{% for d in docs %}`.
            names_in_tags = jinja2.meta.find_undeclared_variables(ENV.parse(to_jinja(segment.text)))
        except jinja2.TemplateSyntaxError:
            names_in_tags = set()
        for name in sorted(set(names) | names_in_tags, key=lambda n: names[n].start if n in names else 0):
            if name in used:
                continue
            used.add(name)
            if name in provided:
                continue
            if name in names:
                start, end = names[name].start, names[name].end
            else:
                m = re.search(rf"\b{re.escape(name)}\b", segment.text)
                start, end = (m.start(), m.end()) if m else (0, 1)
            findings.append(TEMPLATE.at(
                ctx, seg, start, end, f"variable '{name}' is used but never provided",
                f"Declare '{name}' under variables: (or provide it from the dataset), or fix the spelling.",
                severity="error"))
    for name in declared or {}:
        if name not in used:
            line, col = ctx.prompt.key_positions.get(f"variables.{name}", (1, 1))
            findings.append(TEMPLATE.at_position(
                ctx, (line, col, line, col + len(name)), f"variable '{name}' is declared but never used",
                f"Remove '{name}' from variables:, or insert it with {{{{ {name} }}}}."))
    return findings


TEMPLATE = Rule(
    "template", "Template is well-formed", "template", "error",
    "Variables used but never provided, declared but unused, unbalanced delimiters, Jinja syntax errors.", template_rule)
