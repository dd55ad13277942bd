"""Practices 3, 6 and 7: be specific about the outcome, replace fluffy amounts with
numbers, and say what to do instead of only what not to do."""

from __future__ import annotations

import re

from tunelab.prompts.finding import Finding
from tunelab.prompts.reading import TASK_PATTERNS, VERBS, is_instruction
from tunelab.prompts.rules.base import LintContext, Rule

_NUMBER = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|fifty|hundred|single)"
_UNITS = r"(?:word|sentence|paragraph|line|bullet|item|point|character|page|stanza|verse|section|tweet|haiku|minute)s?"
LENGTH = re.compile(
    rf"\b{_NUMBER}[\s-]+(?:\w+[\s-]+)?{_UNITS}\b|\b(?:under|at most|no more than|fewer than|less than|up to|maximum of|between)\s+\d+"
    r"|\b(?:short|brief|concise|long|lengthy|one-line|one-sentence|one-paragraph|succinct|tweet-length)\b", re.I)
FORMAT = re.compile(
    r"\b(?:bullet|bulleted|bullet-point|list|table|json|markdown|csv|yaml|headings?|numbered|outline|haiku|sonnet|limerick"
    r"|paragraphs?|subject line|checklist|faq|dialogue|acrostic|tagline|slogan|backticks|code block)\b"
    r"|\b(?:reply|respond|answer|return|output)\s+with\b[^.\n]*\bonly\b", re.I)
AUDIENCE = re.compile(
    r"\b(?:audience|readers?|aimed at|targeted at|written for|addressed to"
    r"|for (?:a |an |the |our |my |new |busy |young )?(?:[\w-]+ ){0,2}(?:customers|beginners|children|kids|students|engineers"
    r"|developers|executives|experts|newcomers|users|managers|teenagers|investors|patients|parents|employees|colleagues"
    r"|clients|subscribers|followers|novices|professionals|adults|non-experts|laypeople|public|team|hires|shoppers|visitors))\b", re.I)
STYLE = re.compile(
    r"\b(?:tone|style|voice|formal|informal|casual|friendly|playful|humorous|funny|serious|inspiring|inspirational|persuasive"
    r"|professional|academic|conversational|enthusiastic|warm|empathetic|witty|neutral|upbeat|poetic|rhyming|technical"
    r"|lighthearted|light-hearted|sarcastic|polite|respectful|first person|third person|in the style of|plain (?:english|language)"
    r"|simple (?:words|language|english)|jargon-free|vivid|calm|reassuring|optimistic|solemn|whimsical)\b", re.I)

FLUFFY = re.compile(
    r"\b(?:(?:fairly|somewhat|rather|pretty|relatively|reasonably|quite|kind of|sort of|a bit|a little|not too|not very"
    r"|not overly|slightly)\s+(?:short|long|brief|concise|lengthy|detailed|much|many|few|wordy|shorter|longer)(?:\s+more)?"
    r"|(?:a few|a couple(?: of)?|several|a handful of|a number of|a bunch of)\s+(?:short\s+|brief\s+|long\s+)?"
    r"(?:sentences|words|paragraphs|lines|bullet points|bullets|points|items|ideas|options|suggestions|keywords|tips)"
    r"|not too much(?:\s+more)?)\b", re.I)
_PRESENTING = re.compile(r"(?:here are|below are|following|these are|there are)\s*$", re.I)

PROHIBITION = re.compile(
    r"^(?:(?:please|also|and|but|so|however|important|note)[,:!]?\s+)*"
    r"(?:(?:you|the (?:\w+ )?(?:agent|assistant|model|bot|ai|answer|response|summary|reply|output))\s+(?:must|should|will|shall|may|can)?\s*)?"
    r"(do not|don'?t|never|must not|mustn'?t|should not|shouldn'?t|may not|will not|won'?t|avoid|refrain from|no)\b", re.I)
_ALTERNATIVE = re.compile(r"\b(?:instead|rather|otherwise|in place of)\b", re.I)
_CONDITIONAL = re.compile(r"^\s*(?:if|when|whenever|where)\b[^,]*,\s*(?:then\s+)?([A-Za-z']+)", re.I)


def be_specific(ctx: LintContext) -> list[Finding]:
    reading = ctx.reading
    if reading.task not in ("generation", "summarization"):
        return []
    text = reading.instruction_text()
    if LENGTH.search(text) or FORMAT.search(text) or AUDIENCE.search(text) or STYLE.search(text):
        return []
    pattern = dict(TASK_PATTERNS)[reading.task]
    target = next((s for s in reading.instructions if re.search(pattern, s.text, re.I)), None)
    target = target or (reading.instructions[0] if reading.instructions else None)
    message = (f"this {reading.task} request states none of length, format, audience or style, "
               "so the model has to guess what a good answer looks like")
    fix = 'Say what you want, e.g. "in 3 short paragraphs", "as a bulleted list", "for new customers", "in a friendly tone".'
    if target is None:
        return [BE_SPECIFIC.at(ctx, 0, 0, len(reading.segments[0].text.split("\n")[0]), message, fix)]
    return [BE_SPECIFIC.at(ctx, target.seg, target.start, target.end, message, fix)]


def fluffy_wording(ctx: LintContext) -> list[Finding]:
    findings = []
    for seg, (masked, segment) in enumerate(zip(ctx.reading.masked, ctx.reading.segments)):
        if segment.role == "assistant":
            continue
        for m in FLUFFY.finditer(masked):
            if _PRESENTING.search(masked[max(0, m.start() - 16):m.start()]):
                continue  # "here are a few examples" describes the prompt, not the output
            findings.append(FLUFFY_WORDING.at(
                ctx, seg, m.start(), m.end(),
                f'"{m.group(0)}" is an imprecise amount; the model\'s idea of it will differ from yours',
                'Use a number: e.g. "in 3 to 5 sentences", "at most 50 words", "exactly 4 bullet points".'))
    return findings


def say_what_to_do(ctx: LintContext) -> list[Finding]:
    reading = ctx.reading
    sentences = reading.sentences
    findings = []
    for i, sentence in enumerate(sentences):
        m = PROHIBITION.match(_strip_bullet(sentence.text))
        if not m or _offers_alternative(sentence.text, m):
            continue
        neighbours = [sentences[j] for j in (i - 1, i + 1) if 0 <= j < len(sentences) and sentences[j].unit == sentence.unit]
        if any(_is_positive(n.text) for n in neighbours):
            continue
        word = m.group(1)
        shouted = word.isupper() and len(word) > 2
        findings.append(SAY_WHAT_TO_DO.at(
            ctx, sentence.seg, sentence.start, sentence.end,
            "this only says what not to do" + (" (and shouting it in capitals adds no information)" if shouted else "")
            + "; without an alternative the model has to guess what is wanted instead",
            'Add what to do instead, e.g. "Instead of asking for the password, link the reset page: <url>".'))
    return findings


def _strip_bullet(text: str) -> str:
    return re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", text).strip()


def _offers_alternative(text: str, m: re.Match) -> bool:
    if _ALTERNATIVE.search(text):
        return True
    parts = re.split(r";|:|—|–|\s-\s|,\s*(?:but|so)\s+|\bbut\b", _strip_bullet(text))
    return any(_is_positive(part) for part in parts[1:]) or any(_CONDITIONAL_VERB(part) for part in parts)


def _CONDITIONAL_VERB(text: str) -> bool:
    c = _CONDITIONAL.match(text)
    return bool(c) and c.group(1).lower() in VERBS and not PROHIBITION.match(text[c.start(1):])


def _is_positive(text: str) -> bool:
    text = _strip_bullet(text)
    if re.match(r"^(?:instead|rather|otherwise)\b", text, re.I) or _ALTERNATIVE.search(text):
        return True
    if PROHIBITION.match(text):
        return False
    return is_instruction(text) or _CONDITIONAL_VERB(text)


BE_SPECIFIC = Rule(
    "be-specific", "State length, format, audience or style", 3, "warning",
    "A generation request that states none of length, format, audience or style.", be_specific)
FLUFFY_WORDING = Rule(
    "fluffy-wording", "Replace imprecise amounts with numbers", 6, "warning",
    'Imprecise amounts ("fairly short", "a few sentences") where a number would do.', fluffy_wording)
SAY_WHAT_TO_DO = Rule(
    "say-what-to-do", "Say what to do, not only what not to do", 7, "warning",
    "A prohibition (do not, never, DON'T) with no instruction of what to do instead.", say_what_to_do)
