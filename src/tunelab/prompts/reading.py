"""How the linter reads a prompt: which sentences are instructions, where inserted or
pasted context sits, what is fenced by delimiters, and what task the prompt asks for.

Every rule works from one `Reading`, so all rules agree on what counts as an
instruction or as context. Offsets are into each segment's text; `span()` turns them
into file positions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunelab.prompts.placeholders import JINJA_BLOCK, JINJA_COMMENT, find_placeholders
from tunelab.prompts.prompt_file import PromptFile, Segment
from tunelab.prompts.shots import shot_blocks

VERBS = frozenset("""
summarize summarise extract classify categorize categorise label translate write compose draft generate create
list answer rewrite rephrase paraphrase identify explain convert describe give return produce tag determine find
tell respond reply output provide suggest recommend fix review correct edit proofread analyze analyse compare
evaluate rate score count detect pick choose select sort rank name outline plan brainstorm complete continue fill
format use make turn read check decide predict infer map parse highlight mark quote cite replace remove add keep
be do avoid never always only include exclude state mention ask greet apologize apologise refer diagnose assign
implement design build solve calculate compute estimate condense shorten expand simplify split group match
pull get fetch look say link offer point direct escalate transfer leave stick stay focus limit prefer spell send hand show ignore treat
""".split())
_LEAD = re.compile(r"^(?:please|now|then|first|finally|also|and|next|lastly|additionally)\b,?\s*", re.I)
_PHRASE = re.compile(
    r"^(?:your (?:task|job|goal) is|you will|you must|you should|i want you to|i need you to|i'?d like you to|"
    r"i would like you to|can you|could you|help me|make sure|be sure to)\b", re.I)
_LABEL = re.compile(r"^[A-Za-z][A-Za-z'_-]*\s*:")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|$)")
# Tags that hold instructions rather than context: their content is read as instructions.
INSTRUCTION_TAGS = frozenset("""instructions instruction task rules rule guidelines format output_format output role system
constraints style requirements steps example_output response_format desired_format""".split())
CONTEXT_LABELS = re.compile(
    r"^[ \t]*(text|article|email|document|passage|context|review|transcript|message|input|story|report|notes|paragraph|"
    r"content|essay|conversation|letter|post|tweet|source|excerpt|abstract)[ \t]*:[ \t]*", re.I | re.M)

TASK_PATTERNS = (
    ("code", r"\b(?:python|javascript|(?:postgre|my|t-?)sql|sqlite|typescript|sql|bash|shell|rust|golang|java|c\+\+|ruby|php|kotlin|swift|regex)\b[^.\n]*"
             r"\b(?:function|query|script|code|class|program|snippet|method|statement|one-liner|expression|module)\b"
             r"|\b(?:write|implement|generate|create)\s+(?:a|an|the)\s+(?:\w+\s+){0,2}(?:function|script|program|class|method)\b"
             r"|```(?!json|yaml|yml|text|txt|xml|markdown|md|csv)[a-z]+"),
    ("extraction", r"\b(?:extract|pull out|list (?:all|every|each)\b|find (?:all|every)\b|parse out|named entit"
                   r"|identify (?:all|every|each|the) [\w ]{0,25}(?:entities|names|dates|amounts|mentioned))"),
    ("classification", r"\b(?:classify|categori[sz]e|sentiment|which (?:category|label|class)|assign (?:a|one) (?:label|category)"
                       r"|label (?:the|each|this))"),
    ("summarization", r"\b(?:summari[sz]e|summary|tl;?dr|condense|key points|main points)\b"),
    ("qa", r"\b(?:answer (?:the|this|each|following|user'?s?)\s*questions?|answer using|answer based on|answer from)\b|^\s*(?:q|question)\s*:"),
    ("generation", r"\b(?:write|compose|draft|generate|create|come up with|brainstorm|invent|craft)\b"),
)


@dataclass
class Region:
    seg: int
    start: int
    end: int
    kind: str  # quotes | code | xml:<tag> | pasted


@dataclass
class Var:
    name: str
    seg: int
    start: int
    end: int
    block: bool  # inserted as a block of context (own line, or after a "Label:"), not inline in a sentence
    delimited: bool


@dataclass
class Sentence:
    seg: int
    start: int
    end: int
    text: str
    unit: tuple[int, int]  # (segment, paragraph or bullet) or bullet it belongs to; "adjacent" sentences share a unit
    instruction: bool


@dataclass
class Reading:
    prompt: PromptFile
    fences: list[Region] = field(default_factory=list)
    pasted: list[Region] = field(default_factory=list)
    vars: list[Var] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    sentences: list[Sentence] = field(default_factory=list)
    task: str | None = None
    hash_lines: list[list[int]] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        return self.prompt.segments

    @property
    def instructions(self) -> list[Sentence]:
        return [s for s in self.sentences if s.instruction]

    def span(self, seg: int, start: int, end: int) -> tuple[int, int, int, int]:
        line, column = self.segments[seg].position(start)
        end_line, end_column = self.segments[seg].position(max(end, start + 1))
        return line, column, end_line, end_column

    def instruction_text(self) -> str:
        """All text outside context and placeholders, for phrase searches."""
        return "\n".join(m for m, s in zip(self.masked, self.segments) if s.role != "assistant")

    def context_elements(self) -> list[tuple[int, int, int]]:
        """(seg, start, end) of each piece of inserted or pasted context, in prompt order."""
        items = [(v.seg, v.start, v.end) for v in self.vars if v.block]
        items += [(r.seg, r.start, r.end) for r in self.fences if is_context_fence(r, self)]
        items += [(r.seg, r.start, r.end) for r in self.pasted]
        roles = [s.role for s in self.segments]
        return sorted(i for i in items if roles[i[0]] != "assistant")


def read_prompt(prompt: PromptFile, task: str | None = None) -> Reading:
    reading = Reading(prompt)
    for index, segment in enumerate(prompt.segments):
        text = segment.text
        fences = _fences(index, text)
        reading.fences += fences
        reading.hash_lines.append([m.start() for m in re.finditer(r"(?m)^[ \t]*###", text)])
        placeholders = find_placeholders(text)
        # A variable in a few-shot example's slot is framed by the example pattern itself.
        shot_spans = [(b["lines"][0][0], b["lines"][-1][0] + len(b["lines"][-1][1])) for b in shot_blocks(text)]
        for p in placeholders:
            in_shot = any(a <= p.start < b for a, b in shot_spans) or _before_open_slot(text, p)
            reading.vars.append(Var(p.name, index, p.start, p.end, _is_block(text, p, placeholders),
                                    in_shot or _is_delimited(index, text, p, fences, reading.hash_lines[-1], segment)))
        reading.pasted += _pasted(index, text, fences, placeholders)
        masked = _mask(text, fences, placeholders)
        for r in reading.pasted:
            if r.seg == index:
                masked = masked[:r.start] + _blank(masked[r.start:r.end]) + masked[r.end:]
        reading.masked.append(masked)
        if segment.role != "assistant":
            reading.sentences += _sentences(index, masked)
    reading.task = task or prompt.task or infer_task(reading)
    return reading


def infer_task(reading: Reading) -> str | None:
    text = reading.instruction_text()
    for name, pattern in TASK_PATTERNS:
        if re.search(pattern, text, re.I | re.M):
            return name
    return "chat" if reading.prompt.is_chat else None


def is_instruction(sentence: str) -> bool:
    text = _BULLET.sub("", sentence).strip()
    while True:
        stripped = _LEAD.sub("", text)
        if stripped == text:
            break
        text = stripped
    if _LABEL.match(text):
        return False
    if _PHRASE.match(text):
        return True
    words = re.findall(r"[A-Za-z']+", text)
    return len(words) >= 2 and words[0].lower().replace("'", "") in VERBS | {"dont"}


def is_context_fence(region: Region, reading: Reading) -> bool:
    if region.kind.startswith("xml:"):
        return region.kind[4:].lower() not in INSTRUCTION_TAGS
    if region.kind == "code":
        return any(v.seg == region.seg and region.start <= v.start < region.end for v in reading.vars)
    return True


def _fences(seg: int, text: str) -> list[Region]:
    regions = []
    for marker, kind in (('"""', "quotes"), ("```", "code")):
        starts = [m.start() for m in re.finditer(re.escape(marker), text)]
        regions += [Region(seg, a, b + 3, kind) for a, b in zip(starts[0::2], starts[1::2])]
    open_tags: dict[str, list[re.Match]] = {}
    for m in re.finditer(r"<(/?)([A-Za-z][\w-]*)(?:\s[^<>]*)?>", text):
        if not m.group(1):
            open_tags.setdefault(m.group(2), []).append(m)
        elif open_tags.get(m.group(2)):
            opener = open_tags[m.group(2)].pop()
            regions.append(Region(seg, opener.start(), m.end(), "xml:" + m.group(2)))
    return regions


def _is_block(text: str, p, placeholders) -> bool:
    line_start = text.rfind("\n", 0, p.start) + 1
    line_end = text.find("\n", p.end)
    line_end = len(text) if line_end < 0 else line_end
    line = text[line_start:line_end]
    for q in reversed([q for q in placeholders if line_start <= q.start and q.end <= line_end]):
        line = line[: q.start - line_start] + line[q.end - line_start:]
    rest = line.strip()
    return rest == "" or re.fullmatch(r"[A-Za-z][\w /()'-]{0,40}:", rest) is not None or rest in ('"""', "```", "###")


def _before_open_slot(text: str, p) -> bool:
    """`Question: {{ q }}` followed by an empty `Answer:` line: the labels frame the input (completion slot)."""
    line_start = text.rfind("\n", 0, p.start) + 1
    line_end = text.find("\n", p.end)
    if line_end < 0 or not re.match(r"\s*[A-Za-z][\w ]{0,30}:", text[line_start:p.start]):
        return False
    following = text[line_end + 1:].split("\n", 1)[0]
    rest = text[line_end + 1 + len(following):]
    return re.fullmatch(r"\s*[A-Za-z][\w ]{0,30}:\s*", following) is not None and not rest.strip()


def _is_delimited(seg: int, text: str, p, fences: list[Region], hashes: list[int], segment: Segment) -> bool:
    if any(r.start < p.start and p.end <= r.end and r.kind != "pasted" for r in fences):
        return True
    if hashes:  # a `###` line separates the instructions from the inserted text
        return True
    # A chat message that is nothing but the variable is fenced by the message boundary.
    return segment.role is not None and text.strip() == text[p.start:p.end]


def _pasted(seg: int, text: str, fences: list[Region], placeholders) -> list[Region]:
    """Long unfenced context after a label such as `Article:` (a label used once; repeated labels are few-shot)."""
    labels = [m for m in CONTEXT_LABELS.finditer(text)]
    counts: dict[str, int] = {}
    for m in labels:
        counts[m.group(1).lower()] = counts.get(m.group(1).lower(), 0) + 1
    regions = []
    for m in labels:
        if counts[m.group(1).lower()] > 1:
            continue
        start = m.end()
        if text.startswith("\n", start):
            start += 1
        end = text.find("\n\n", start)
        end = len(text.rstrip()) if end < 0 else end
        body = text[start:end]
        if len(re.findall(r"\w+", body)) < 20 or any(start <= p.start < end for p in placeholders):
            continue
        if any(r.start <= start < r.end or start <= r.start < end for r in fences):
            continue
        regions.append(Region(seg, start, end, "pasted"))
    return regions


def _blank(s: str) -> str:
    return re.sub(r"[^\n]", " ", s)


def _mask(text: str, fences: list[Region], placeholders) -> str:
    chars = list(text)

    def blank(a: int, b: int) -> None:
        for i in range(a, b):
            if chars[i] != "\n":
                chars[i] = " "

    for r in fences:
        if r.kind.startswith("xml:") and r.kind[4:].lower() in INSTRUCTION_TAGS:
            # Keep the instructions, hide only the tags themselves.
            blank(r.start, text.index(">", r.start) + 1)
            blank(text.rindex("<", r.start, r.end), r.end)
        else:
            blank(r.start, r.end)
    for p in placeholders:
        blank(p.start, p.end)
    for m in list(JINJA_COMMENT.finditer(text)) + list(JINJA_BLOCK.finditer(text)):
        blank(m.start(), m.end())
    return "".join(chars)


def _sentences(seg: int, masked: str) -> list[Sentence]:
    out, unit, offset = [], 0, 0
    for line in masked.split("\n"):
        bullet = _BULLET.match(line)
        if not line.strip() or bullet:
            unit += 1
        if bullet:  # sentences start after the list marker
            line = " " * bullet.end() + line[bullet.end():]
        for m in _SENTENCE.finditer(line):
            body = m.group(0).rstrip()
            if re.search(r"[A-Za-z]", body):
                out.append(Sentence(seg, offset + m.start(), offset + m.start() + len(body), body, (seg, unit), is_instruction(body)))
        offset += len(line) + 1
    return out
