"""Sampling parameters that fight the prompt: temperature on tasks with one right
answer, max_tokens that cannot fit the requested length (or is the only length
control), and completion prompts with nothing to stop them."""

from __future__ import annotations

import math
import re

from tunelab.prompts.finding import Finding
from tunelab.prompts.rules.base import LintContext, Rule
from tunelab.prompts.rules.format import _few_shot_blocks
from tunelab.prompts.rules.wording import LENGTH

_WORDS = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
          "nine": 9, "ten": 10, "twelve": 12, "fifteen": 15, "twenty": 20, "fifty": 50, "hundred": 100}
_NUM = r"(\d+|" + "|".join(_WORDS) + ")"
REQUESTED = re.compile(
    rf"\b{_NUM}(?:\s*(?:-|–|to|or)\s*{_NUM})?[\s-]+(?:[a-z]+[\s-]+)?(word|sentence|paragraph|line|bullet|point|item|character|page|token)s?\b",
    re.I)
# Rough English token costs per unit (about 0.75 words per token); only used to catch
# requests that plainly cannot fit, so the estimates lean low.
TOKENS_PER = {"word": 1.3, "sentence": 20, "paragraph": 100, "line": 12, "bullet": 15, "point": 15, "item": 10,
              "character": 0.25, "page": 500, "token": 1}
OPEN_SLOT = re.compile(r"^[ \t]*[A-Za-z][\w ]{0,30}:[ \t]*$")


def params_rule(ctx: LintContext) -> list[Finding]:
    params = ctx.params
    if not params:
        return []
    reading = ctx.reading
    findings = []
    task = reading.task
    temperature = params.get("temperature")
    if isinstance(temperature, (int, float)) and temperature > 0 and task in ("extraction", "classification", "qa"):
        findings.append(PARAMS.at_position(
            ctx, _key_span(ctx, "temperature"),
            f"temperature {temperature} on {'an' if task[0] in 'aeiou' else 'a'} {task} task: there is one right answer, and sampling only adds variation",
            "Set temperature: 0 for extraction, classification and factual QA."))
    max_tokens = params.get("max_tokens")
    text = reading.instruction_text()
    if isinstance(max_tokens, int):
        requested = _requested_tokens(text)
        if requested and requested[0] > max_tokens:
            tokens, phrase = requested
            findings.append(PARAMS.at_position(
                ctx, _key_span(ctx, "max_tokens"),
                f'the prompt asks for "{phrase}" (about {tokens} tokens) but max_tokens is {max_tokens}, so the answer will be cut off',
                f"Raise max_tokens to at least {math.ceil(tokens * 1.5)}, or ask for less.", severity="error"))
        elif not requested and not LENGTH.search(text) and task in ("generation", "summarization"):
            findings.append(PARAMS.at_position(
                ctx, _key_span(ctx, "max_tokens"),
                "max_tokens is the only length control; the model never sees it and is simply cut off mid-sentence",
                'State the length in the prompt (e.g. "in about 100 words") and keep max_tokens as a limit above it.'))
    if not ctx.prompt.is_chat and "stop" not in params and _completion_style(ctx):
        findings.append(PARAMS.at_position(
            ctx, _key_span(ctx, None),
            "a completion-style prompt with no stop sequence: after answering, the model tends to continue the "
            "pattern with another example",
            'Add a stop sequence such as stop: ["\\n\\n"] (or your example separator).'))
    return findings


def _requested_tokens(text: str) -> tuple[int, str] | None:
    best = None
    for m in REQUESTED.finditer(text):
        count = max(_number(m.group(1)), _number(m.group(2)) if m.group(2) else 0)
        tokens = math.ceil(count * TOKENS_PER[m.group(3).lower()])
        if best is None or tokens > best[0]:
            best = (tokens, m.group(0))
    return best


def _number(text: str) -> int:
    return int(text) if text.isdigit() else _WORDS[text.lower()]


def _completion_style(ctx: LintContext) -> bool:
    text = ctx.reading.segments[0].text.rstrip() if ctx.reading.segments else ""
    last = text[text.rfind("\n") + 1:]
    return bool(OPEN_SLOT.match(last)) or bool(ctx.prompt.examples) or _few_shot_blocks(ctx.reading)


def _key_span(ctx: LintContext, key: str | None) -> tuple[int, int, int, int]:
    positions = ctx.prompt.key_positions
    if key and f"params.{key}" in positions:
        line, col = positions[f"params.{key}"]
        return line, col, line, col + len(key)
    if "params" in positions:  # point at the params block when the key itself is missing
        line, col = positions["params"]
        return line, col, line, col + len("params")
    return 1, 1, 1, 2


PARAMS = Rule(
    "params", "Sampling parameters fit the task", "params", "warning",
    "Temperature above 0 for extraction, classification or QA; max_tokens that cannot fit the requested length "
    "or is the only length control; a completion-style prompt with no stop sequence.", params_rule)
