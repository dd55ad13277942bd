"""Precision is the acceptance test: each rule fires on the weaker prompt at the marked
span, and stays silent on the better version of the same request."""

import pytest

from tunelab.prompts import RULES, lint_text

from prompt_pairs import PAIRS, unmark

IDS = [f"{rule}:{name}" for rule, name, *_ in PAIRS]


@pytest.mark.parametrize("rule,name,bad,good,path", PAIRS, ids=IDS)
def test_bad_prompt_raises_rule_at_span(rule, name, bad, good, path):
    text, span = unmark(bad)
    findings = [f for f in lint_text(text, path=path) if f.rule == rule]
    spans = [(f.line, f.column, f.end_line, f.end_column) for f in findings]
    assert span in spans, f"{rule} should fire at {span}; got {spans}"


@pytest.mark.parametrize("rule,name,bad,good,path", PAIRS, ids=IDS)
def test_better_prompt_raises_no_finding_for_rule(rule, name, bad, good, path):
    findings = [f for f in lint_text(good, path=path) if f.rule == rule]
    assert findings == [], [f.message for f in findings]


def test_every_rule_has_at_least_four_pairs():
    counts = {rule.id: sum(1 for r, *_ in PAIRS if r == rule.id) for rule in RULES}
    assert all(n >= 4 for n in counts.values()), counts


@pytest.mark.parametrize("rule,name,bad,good,path", PAIRS, ids=IDS)
def test_findings_carry_practice_and_fix(rule, name, bad, good, path):
    text, _ = unmark(bad)
    meta = {r.id: r for r in RULES}[rule]
    for f in lint_text(text, path=path):
        if f.rule == rule:
            assert f.practice == meta.practice and f.title == meta.title
            assert f.fix and f.message and f.severity in ("error", "warning", "info")
            assert (f.end_line, f.end_column) > (f.line, f.column)
