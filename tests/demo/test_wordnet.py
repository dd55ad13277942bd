"""Reading WordNet's data.noun (wndb format) and the demo's split by headword.

`data.noun` here is a sample of lines from WordNet 3.0's own file (Debian's wordnet-base), licence header included,
so the parser meets the real format; the expected values below are read off those lines.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tunelab.demo.wordnet import LABELS, WordNetError, parse_line, read_synsets, split

FIXTURE = Path(__file__).parent / "data.noun"


def test_reads_the_eight_categories_and_skips_the_rest():
    synsets = read_synsets(FIXTURE)
    counts = Counter(s.category for s in synsets)
    # Six sampled lines per lexicographer file, plus "bass" the fish (noun.animal) and the instrument (noun.artifact);
    # noun.attribute (07) is not a category and the licence header is not data.
    assert counts == {**{label: 6 for label in LABELS}, "animal": 7, "artifact": 7}
    by_offset = {s.offset: s for s in synsets}
    bacteria = by_offset["01361840"]
    assert bacteria.words == ("Athiorhodaceae", "family_Athiorhodaceae") and bacteria.category == "animal"
    assert bacteria.entry == "Athiorhodaceae: small motile sulphur bacteria"
    # The gloss's example sentences (after ';') are not part of the definition.
    allotrope = by_offset["14624025"]
    assert allotrope.category == "substance"
    assert allotrope.entry == "allotrope: a structurally different form of an element"
    assert by_offset["07592481"].entry == "beef stew: a stew made with beef"  # underscores are spaces


def test_bad_lines_are_named_by_file_and_line(tmp_path):
    lines = FIXTURE.read_text().splitlines(keepends=True)
    bad = tmp_path / "data.noun"
    bad.write_text("".join(lines[:40]) + "01361840 05 n 02 Athiorhodaceae\n")
    with pytest.raises(WordNetError, match=rf"{bad}:41: not a wndb synset line"):
        read_synsets(bad)
    with pytest.raises(WordNetError, match="no ' | ' before the gloss"):
        parse_line("01361840 05 n 01 x 0 000 small bacteria\n")
    with pytest.raises(WordNetError, match="synset type 'v'"):
        parse_line("01361840 05 v 01 x 0 000 | small bacteria\n")


def test_split_is_balanced_disjoint_by_headword_and_stable():
    synsets = read_synsets(FIXTURE)
    data = split(synsets, held_out_per_label=2, train_per_label=3)
    assert Counter(s.category for s in data.held_out) == {label: 2 for label in LABELS}
    assert Counter(s.category for s in data.train) == {label: 3 for label in LABELS}
    held = {s.headword.lower() for s in data.held_out}
    for s in data.train:
        assert held.isdisjoint(w.replace("_", " ").lower() for w in s.words), s
    # Round-robin order: every prefix of 8 has one item per category.
    assert [s.category for s in data.held_out[:8]] == LABELS
    again = split(list(reversed(synsets)), held_out_per_label=2, train_per_label=3)
    assert [s.offset for s in again.held_out] == [s.offset for s in data.held_out]
    assert [s.offset for s in again.train] == [s.offset for s in data.train]


def test_a_headword_with_two_senses_never_straddles_the_split():
    """'bass' names a fish (noun.animal) and an instrument (noun.artifact): when one is held out, the other must
    not be trained on."""
    synsets = read_synsets(FIXTURE)
    data = split(synsets, held_out_per_label=2, train_per_label=3)
    assert [s.category for s in data.held_out if s.headword == "bass"] == ["artifact"]
    assert not [s for s in data.train if s.headword == "bass"]
    # noun.animal has 7 synsets, 2 held out: 5 would be left, but the fish "bass" may not be trained on.
    with pytest.raises(WordNetError, match="category 'animal': 4 training items, 5 wanted"):
        split(synsets, held_out_per_label=2, train_per_label=5)


def test_too_few_items_is_an_error_naming_the_category():
    with pytest.raises(WordNetError, match="category 'plant': 6 held-out items, 7 wanted"):
        split(read_synsets(FIXTURE), held_out_per_label=7, train_per_label=0)
