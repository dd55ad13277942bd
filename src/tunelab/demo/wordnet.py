"""WordNet 3.0 noun synsets -> the demo's task: classify `headword: gloss` into one of eight categories.

The data is written by people (Princeton's lexicographers) and installed by Debian's `wordnet-base` package, so
nothing is fetched at run time. Each line of `data.noun` (format: wndb(5WN)) is one synset:

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [pointers ...] | gloss

`lex_filenum` names the lexicographer file the synset was written in (lexnames(5WN)); eight of them are the
categories. The gloss is a definition, then example sentences in quotes after `;`; the task keeps the definition.
The split is by headword: a held-out headword never appears, as any of a synset's words, in the training split.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DATA_NOUN = Path("/usr/share/wordnet/data.noun")
LICENCE = ("WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Used under the WordNet "
           "licence (permissive: use, copy, modify and distribute for any purpose, keeping this notice); "
           "from Debian's wordnet-base package.")
# lexnames(5WN): lexicographer file number -> our label.
CATEGORIES = {5: "animal", 20: "plant", 13: "food", 18: "person", 6: "artifact", 15: "location", 8: "body",
              27: "substance"}  # fmt: skip
LABELS = list(CATEGORIES.values())


class WordNetError(ValueError):
    """A data.noun line that does not follow the wndb format, named by file and line."""


@dataclass(frozen=True)
class Synset:
    offset: str
    category: str
    words: tuple[str, ...]  # as written, underscores for spaces
    definition: str

    @property
    def headword(self) -> str:
        return self.words[0].replace("_", " ")

    @property
    def entry(self) -> str:
        """What the model classifies."""
        return f"{self.headword}: {self.definition}"


def read_synsets(path: Path = DATA_NOUN) -> list[Synset]:
    """The synsets of the eight categories, in file order."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():  # the licence header, each line indented by two spaces
                continue
            synset = parse_line(line, f"{path}:{lineno}")
            if synset is not None:
                out.append(synset)
    return out


def parse_line(line: str, where: str = "data.noun") -> Synset | None:
    """One synset, or None when its lexicographer file is not one of the eight categories."""
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    try:
        offset, lex_filenum, ss_type, w_cnt = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
        words = tuple(fields[4 + 2 * i] for i in range(w_cnt))
        int(fields[4 + 2 * w_cnt])  # p_cnt: present and numeric, or the line is cut short
    except (IndexError, ValueError):
        raise WordNetError(f"{where}: not a wndb synset line (offset lex_filenum ss_type w_cnt words... p_cnt ... "
                           f"| gloss): {line[:80]!r}") from None
    if ss_type != "n":
        raise WordNetError(f"{where}: synset type {ss_type!r}, expected 'n' in a data.noun file")
    if not bar:
        raise WordNetError(f"{where}: no ' | ' before the gloss")
    if lex_filenum not in CATEGORIES:
        return None
    definition = gloss.split(';')[0].strip()
    return Synset(offset, CATEGORIES[lex_filenum], words, definition)


@dataclass
class Split:
    train: list[Synset]
    held_out: list[Synset]


def split(synsets: list[Synset], held_out_per_label: int, train_per_label: int) -> Split:
    """A balanced held-out set and a balanced training set, disjoint by headword.

    Order comes from a hash of the headword, not Python's `hash` (salted per process), so every run and every
    machine draws the same items.
    """
    by_label: dict[str, list[Synset]] = defaultdict(list)
    for s in sorted(synsets, key=lambda s: (_key(s.headword.lower()), s.offset)):
        by_label[s.category].append(s)
    held_out: list[Synset] = []
    for label in LABELS:
        held_out += _distinct_headwords(by_label[label])[:held_out_per_label]
    held_words = {s.headword.lower() for s in held_out}
    train: list[Synset] = []
    for label in LABELS:
        # Not one word of a training synset may be a held-out headword (one headword can name several synsets,
        # e.g. "bass" the fish and "bass" the instrument).
        clean = [s for s in by_label[label] if held_words.isdisjoint(w.replace("_", " ").lower() for w in s.words)]
        train += _distinct_headwords(clean)[:train_per_label]
    for label in LABELS:
        for name, rows, want in (("held-out", held_out, held_out_per_label), ("training", train, train_per_label)):
            have = sum(s.category == label for s in rows)
            if have < want:
                raise WordNetError(f"category {label!r}: {have} {name} items, {want} wanted; the data file has too "
                                   "few synsets in this category")
    return Split(_interleave(train), _interleave(held_out))


def _distinct_headwords(synsets: list[Synset]) -> list[Synset]:
    seen, out = set(), []
    for s in synsets:
        if s.headword.lower() not in seen:
            seen.add(s.headword.lower())
            out.append(s)
    return out


def _interleave(synsets: list[Synset]) -> list[Synset]:
    """Round-robin over the categories, so any prefix (a short run, a small batch) is balanced too."""
    by_label: dict[str, list[Synset]] = defaultdict(list)
    for s in synsets:
        by_label[s.category].append(s)
    out = []
    for i in range(max((len(v) for v in by_label.values()), default=0)):
        out += [by_label[label][i] for label in LABELS if i < len(by_label[label])]
    return out


def _key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
