"""Practices 4, 5 and 8: show the output format, keep few-shot examples consistent,
and lead code-generation prompts into the code with a leading word."""

from __future__ import annotations

import re
from collections import Counter

from tunelab.prompts.finding import Finding
from tunelab.prompts.reading import TASK_PATTERNS
from tunelab.prompts.rules.base import LintContext, Rule
from tunelab.prompts.shots import blocks, is_shot, share_pattern, shot_blocks

STRUCTURED = re.compile(r"\b(?:as|in|into|return|output|respond with|produce|reply with)\s+(?:a\s+|an\s+|valid\s+)?(?:json|csv|yaml|xml|table)\b", re.I)
FORMAT_SPEC = re.compile(
    r"\b(?:desired|output|response|answer|expected|following|this|same|exact) format\b|\bformat\s*:|\bformatted (?:as|like)\b"
    r"|\bin the form\b|\bschema\b|\bexample output\b|\bwith (?:the )?(?:keys|fields|columns|properties|headers)\b"
    r"|\b(?:keys|fields|columns|properties)\s*:|\bone per line\b|\bcomma[- ]separated\b|\bbullet|\bnumbered list\b"
    r"|\btable with\b|\blike this\b|\bas follows\b", re.I)
SLOT = re.compile(r":[ \t]*<[\w ,/.-]+>")
LEADING_END = re.compile(
    r"(?:^|\s)(?:import|from|SELECT|select|WITH|def|class|function|const|let|var|#include|package|fn|func|CREATE|INSERT"
    r"|UPDATE|DELETE|public|<\?php|#!\S*)\s*$")
LEADING_START = re.compile(
    r"^\s*(?:import |from \S+ import|SELECT\b|select\b|WITH\b|def |class |function |const |let |#include|package |fn |func "
    r"|CREATE |INSERT |UPDATE |DELETE |public |<\?php|#!|async def )")


def show_format(ctx: LintContext) -> list[Finding]:
    reading = ctx.reading
    text = reading.instruction_text()
    structured = STRUCTURED.search(text)
    if reading.task != "extraction" and not structured:
        return []
    raw = "\n".join(s.text for s in reading.segments)
    if (FORMAT_SPEC.search(text) or SLOT.search(raw) or ctx.prompt.examples or re.search(r"```(?:json|csv|yaml|xml)", raw, re.I)
            or _few_shot_blocks(reading)):
        return []
    pattern = TASK_PATTERNS[1][1] if reading.task == "extraction" else STRUCTURED.pattern
    target = next((s for s in reading.instructions if re.search(pattern, s.text, re.I)), None)
    target = target or (reading.instructions[0] if reading.instructions else None)
    message = "this asks for structured output but never shows the format; the model will pick its own layout"
    fix = 'Add a "Desired format:" block showing the exact output, e.g. "Company names: <comma_separated_list>".'
    if target is None:
        return [SHOW_FORMAT.at(ctx, 0, 0, 1, message, fix)]
    return [SHOW_FORMAT.at(ctx, target.seg, target.start, target.end, message, fix)]


def few_shot_consistency(ctx: LintContext) -> list[Finding]:
    findings = []
    for seg, segment in enumerate(ctx.reading.segments):
        if segment.role == "assistant":
            continue
        paragraphs, separators = blocks(segment.text)
        shots = [b for b in paragraphs if is_shot(b)]
        if len(shots) < 2 or not share_pattern(shots):
            continue
        findings += _label_findings(ctx, seg, shots)
        findings += _value_findings(ctx, seg, shots)
        findings += _separator_findings(ctx, seg, paragraphs, separators, shots)
        last = shots[-1]
        if last is paragraphs[-1] and all(value.strip() for _, _, value, _ in last["labeled"]) and "{" not in last["text"]:
            line_start, _ = last["lines"][-1]
            findings.append(FEW_SHOT.at(
                ctx, seg, line_start, line_start + len(segment.text[line_start:].split("\n")[0]),
                "the examples end with a complete example and no open slot, so the model may continue the pattern "
                "with a new example instead of answering",
                f'End with the real input and an empty "{last["labeled"][-1][0]}:" line for the model to complete.'))
    findings += _yaml_example_findings(ctx)
    return findings


def leading_words(ctx: LintContext) -> list[Finding]:
    reading = ctx.reading
    if reading.task != "code" or not reading.segments:
        return []
    segment = reading.segments[-1]
    if ctx.prompt.is_chat and segment.role != "assistant":
        return []  # a chat model answers a user turn; leading words apply to completions and assistant prefills
    text = segment.text.rstrip()
    line_start = text.rfind("\n") + 1
    last = text[line_start:]
    if LEADING_END.search(last) or LEADING_START.match(last):
        return []
    if last.strip().startswith("```") and text.count("```") % 2 == 1:
        return []
    lang = "sql" if re.search(r"\bsql\b|\bquery\b", text, re.I) else "python"
    lead = "SELECT" if lang == "sql" else "```python\\nimport"
    return [LEADING_WORDS.at(
        ctx, len(reading.segments) - 1, line_start + (len(last) - len(last.lstrip())), len(text),
        "this code-generation prompt does not end with a leading word or an open code fence, so the model may "
        "answer in prose or in another language",
        f'End the prompt with the start of the code, e.g. "{lead}" on the last line.')]


def _label_findings(ctx, seg, shots) -> list[Finding]:
    findings = []
    width = max(len(b["labeled"]) for b in shots)
    for position in range(width):
        forms = Counter(f"{b['labeled'][position][0]}{b['labeled'][position][1]}" for b in shots if len(b["labeled"]) > position)
        usual, count = forms.most_common(1)[0]
        if count < 2:
            continue
        for b in shots:
            if len(b["labeled"]) <= position:
                continue
            label, sep, _, (start, end) = b["labeled"][position]
            if f"{label}{sep}" != usual:
                findings.append(FEW_SHOT.at(
                    ctx, seg, start, end,
                    f'label "{(label + sep).strip()}" differs from "{usual.strip()}" used in the other examples; '
                    "the model copies inconsistencies into its answers",
                    f'Write it exactly as "{usual.strip()}" in every example.'))
    return findings


def _value_findings(ctx, seg, shots) -> list[Finding]:
    complete = [b for b in shots if b["labeled"][-1][2].strip()]
    values = [b["labeled"][-1][2] for b in complete]
    by_norm: dict[str, Counter] = {}
    for v in values:
        by_norm.setdefault(v.strip().strip(".").lower(), Counter())[v] += 1
    findings = []
    for norm, forms in by_norm.items():
        if len(forms) < 2:
            continue
        usual = forms.most_common(1)[0][0]
        for b in complete:
            label, sep, value, (start, end) = b["labeled"][-1]
            if value.strip().strip(".").lower() == norm and value != usual:
                line_offset = next(off for off, line in b["lines"] if off <= start < off + len(line) + 1)
                line = ctx.reading.segments[seg].text[line_offset:].split("\n")[0]
                vstart = line_offset + line.rindex(value)
                findings.append(FEW_SHOT.at(
                    ctx, seg, vstart, vstart + len(value),
                    f'answer "{value}" is written differently from "{usual}" in the other examples',
                    f'Use one spelling for each label: "{usual}".'))
    return findings


def _separator_findings(ctx, seg, paragraphs, separators, shots) -> list[Finding]:
    indices = [paragraphs.index(b) for b in shots]
    between = [(separators[i], paragraphs[i]) for i in indices[1:]]
    if len(between) < 2:
        return []
    usual, count = Counter(s for (s, _), _ in between).most_common(1)[0]
    if count < 2:
        return []
    findings = []
    for (sep, _offset), block in between:
        if sep != usual:
            start, line = block["lines"][0]
            findings.append(FEW_SHOT.at(
                ctx, seg, start, start + len(line),
                f'this example is separated by "{sep}" where the others use "{usual}"',
                f'Separate every example the same way ("{usual}").'))
    return findings


def _yaml_example_findings(ctx) -> list[Finding]:
    examples = ctx.prompt.examples
    if len(examples) < 2:
        return []
    findings = []
    usual = Counter(tuple(e) for e in examples).most_common(1)[0][0]
    for i, example in enumerate(examples):
        line, col = ctx.prompt.key_positions.get(f"examples.{i}", (1, 1))
        if tuple(example) != usual:
            findings.append(FEW_SHOT.at_position(
                ctx, (line, col, line, col + 1),
                f"example {i + 1} has keys {list(example)} where the others have {list(usual)}",
                f"Give every example the same keys, in the same order: {', '.join(usual)}."))
    last_key = usual[-1]
    forms: dict[str, Counter] = {}
    for e in examples:
        if isinstance(e.get(last_key), str):
            forms.setdefault(e[last_key].strip().strip(".").lower(), Counter())[e[last_key]] += 1
    for norm, counter in forms.items():
        if len(counter) > 1:
            common = counter.most_common(1)[0][0]
            for i, e in enumerate(examples):
                if isinstance(e.get(last_key), str) and e[last_key] != common and e[last_key].strip().strip(".").lower() == norm:
                    line, col = ctx.prompt.key_positions.get(f"examples.{i}", (1, 1))
                    findings.append(FEW_SHOT.at_position(
                        ctx, (line, col, line, col + 1),
                        f'example {i + 1} writes {last_key} as "{e[last_key]}" where the others write "{common}"',
                        f'Use one spelling for each label: "{common}".'))
    return findings


def _few_shot_blocks(reading) -> bool:
    return any(shot_blocks(segment.text) for segment in reading.segments)


SHOW_FORMAT = Rule(
    "show-format", "Show the output format", 4, "warning",
    "An extraction or structured-output task that gives no output format or example of it.", show_format)
FEW_SHOT = Rule(
    "few-shot-consistency", "Keep few-shot examples consistent", 5, "warning",
    "Few-shot examples with inconsistent labels or separators, or no final open slot.", few_shot_consistency)
LEADING_WORDS = Rule(
    "leading-words", "End code prompts with a leading word", 8, "warning",
    "A code-generation prompt that does not end with a leading word or fence (import, SELECT, def, ```python).", leading_words)
