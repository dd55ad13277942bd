"""Practice 2: put instructions at the beginning and separate them from the context
with ### or \"\"\" (the separator is also the prompt-injection boundary)."""

from __future__ import annotations

import re

from tunelab.prompts.finding import Edit, Finding
from tunelab.prompts.rules.base import LintContext, Rule


def instructions_first(ctx: LintContext) -> list[Finding]:
    reading = ctx.reading
    contexts = reading.context_elements()
    contexts = [c for c in contexts if not _is_examples_var(ctx, c)]
    instructions = reading.instructions
    if not contexts or not instructions:
        return []
    first = contexts[0]
    late = instructions[0]
    if (late.seg, late.start) < (first[0], first[1]):
        return []
    quoted = late.text if len(late.text) <= 60 else late.text[:57] + "..."
    return [INSTRUCTIONS_FIRST.at(
        ctx, late.seg, late.start, late.end,
        f'the instruction "{quoted}" comes after the context it applies to, so the model reads the context '
        "before it knows what to do with it",
        "Move the instruction to the top of the prompt, then the context below it, fenced with ### or \"\"\".",
        edit=_move_up_edit(ctx, late, first))]


def delimit_context(ctx: LintContext) -> list[Finding]:
    reading = ctx.reading
    findings = []
    for var in reading.vars:
        if not var.block or var.delimited or var.name == "examples" or reading.segments[var.seg].role == "assistant":
            continue
        findings.append(DELIMIT_CONTEXT.at(
            ctx, var.seg, var.start, var.end,
            f"the variable '{var.name}' is inserted without delimiters: the model cannot tell where the inserted "
            "text ends and your instructions resume, and instructions hidden in it can pass as yours (prompt injection)",
            f'Fence it: put """ on the lines before and after {{{{ {var.name} }}}}, or wrap it in <{var.name}>...</{var.name}>.',
            edit=_fence_edit(ctx, var)))
    for region in reading.pasted:
        findings.append(DELIMIT_CONTEXT.at(
            ctx, region.seg, region.start, region.end,
            "pasted context is not fenced off from the instructions",
            'Put """ on the lines before and after the pasted text (or ### before it).',
            edit=_fence_lines_edit(ctx, region.seg, region.start, region.end)))
    return findings


def _is_examples_var(ctx: LintContext, item: tuple[int, int, int]) -> bool:
    return any(v.name == "examples" and v.seg == item[0] and v.start == item[1] for v in ctx.reading.vars)


def _lines(ctx: LintContext) -> list[str]:
    return ctx.prompt.source.split("\n")


def _file_line(ctx: LintContext, seg: int, offset: int) -> int:
    segment = ctx.reading.segments[seg]
    return segment.origins[segment.text.count("\n", 0, offset)][0]


def _fence_edit(ctx: LintContext, var) -> Edit | None:
    segment = ctx.reading.segments[var.seg]
    if not segment.editable:
        return None
    line_no = _file_line(ctx, var.seg, var.start)
    raw = _lines(ctx)[line_no - 1]
    expr = segment.text[var.start:var.end]
    indent = raw[: len(raw) - len(raw.lstrip())]
    content = raw.strip()
    rest = content.replace(expr, "", 1).strip()
    if rest == "":
        return Edit(line_no, line_no, (indent + '"""', indent + expr, indent + '"""'))
    if rest.endswith(":") and content.startswith(rest):
        return Edit(line_no, line_no, (indent + rest + ' """', indent + expr, indent + '"""'))
    return None


def _fence_lines_edit(ctx: LintContext, seg: int, start: int, end: int) -> Edit | None:
    segment = ctx.reading.segments[seg]
    if not segment.editable:
        return None
    first, last = _file_line(ctx, seg, start), _file_line(ctx, seg, max(start, end - 1))
    lines = _lines(ctx)
    body = lines[first - 1:last]
    if segment.text[segment.text.rfind("\n", 0, start) + 1:start].strip():
        return None  # the pasted text shares its first line with the label; leave it to a human
    indent = body[0][: len(body[0]) - len(body[0].lstrip())]
    return Edit(first, last, (indent + '"""', *body, indent + '"""'))


def _move_up_edit(ctx: LintContext, late, first_context) -> Edit | None:
    reading = ctx.reading
    segment = reading.segments[late.seg]
    if not segment.editable or late.seg != first_context[0]:
        return None
    text = segment.text
    line_start = text.rfind("\n", 0, late.start) + 1
    line_end = text.find("\n", late.end)
    line_end = len(text) if line_end < 0 else line_end
    # Only whole lines of pure instruction move; a line shared with context stays for a human.
    if reading.masked[late.seg][line_start:line_end] != text[line_start:line_end]:
        return None
    on_lines = [s for s in reading.sentences if s.seg == late.seg and line_start <= s.start < line_end]
    if not all(s.instruction for s in on_lines):
        return None
    target = text.rfind("\n", 0, first_context[1]) + 1
    previous = text.rfind("\n", 0, max(0, target - 1)) + 1
    if target > 0 and re.fullmatch(r"\s*[A-Za-z][\w /()'-]{0,40}:\s*", text[previous:target - 1] or "x"):
        target = previous  # keep a "Text:" label line together with the context it introduces
    lines = _lines(ctx)
    top = _file_line(ctx, late.seg, target)
    begin, end = _file_line(ctx, late.seg, line_start), _file_line(ctx, late.seg, line_end)
    moved = [re.sub(r"\babove\b", "below", line) for line in lines[begin - 1:end]]
    between = lines[top - 1:begin - 1]
    while between and not between[-1].strip():
        between.pop()
    return Edit(top, end, (*moved, "", *between))


INSTRUCTIONS_FIRST = Rule(
    "instructions-first", "Put instructions before the context", 2, "warning",
    "The instruction comes after the context or inserted variable instead of before it.", instructions_first)
DELIMIT_CONTEXT = Rule(
    "delimit-context", "Fence inserted context with ###, \"\"\" or tags", 2, "warning",
    "An inserted variable or pasted context is not fenced by ###, \"\"\" or XML-style tags.", delimit_context)
