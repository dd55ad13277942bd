"""Few-shot examples written inline: paragraphs of `Label: value` lines that repeat
the same labels. Both the reader (a variable in an example's open slot is framed by
the pattern) and the few-shot rule need to find them."""

from __future__ import annotations

import re
from collections import Counter

LABELED = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9_]*(?: [A-Za-z0-9_]+){0,2})[ \t]*(:|->|=>| - )[ \t]?(.*?)[ \t]*$")
SEPARATOR_LINE = re.compile(r"^[ \t]*(#{3,}|-{3,}|={3,}|\*{3,}|<\|endoftext\|>|END)[ \t]*$")


def blocks(text: str):
    """Paragraph blocks (offsets of their lines) and the separator found before each one."""
    blocks, separators, current, pending, offset = [], [], None, [], 0
    for line in text.split("\n"):
        if not line.strip() or SEPARATOR_LINE.match(line):
            if line.strip():
                pending.append(line.strip())
            current = None
        else:
            if current is None:
                current = {"lines": [], "labeled": [], "text": ""}
                blocks.append(current)
                separators.append(("blank" if not pending else pending[-1], offset))
                pending = []
            current["lines"].append((offset, line))
            current["text"] += line + "\n"
            m = LABELED.match(line)
            if m:
                current["labeled"].append((m.group(1), m.group(2), m.group(3), (offset + m.start(1), offset + m.start(2) + len(m.group(2).rstrip()))))
        offset += len(line) + 1
    return blocks, separators


def is_shot(block) -> bool:
    return len(block["labeled"]) >= 2 and len(block["labeled"]) == len(block["lines"])


def share_pattern(shots) -> bool:
    keys = Counter(tuple(label.lower() for label, *_ in b["labeled"]) for b in shots)
    return keys.most_common(1)[0][1] >= 2


def shot_blocks(text: str) -> list[dict]:
    """The blocks that form a few-shot pattern (at least two share their labels), else []."""
    shots = [b for b in blocks(text)[0] if is_shot(b)]
    return shots if len(shots) >= 2 and share_pattern(shots) else []
