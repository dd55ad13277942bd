"""The Python API the evaluation harness calls, and span mapping inside YAML scalars."""

import pytest

import tunelab.prompts as prompts
from tunelab.prompts import Finding, lint_text

from prompt_pairs import unmark


def test_public_names_are_exported():
    for name in ("lint_text", "lint_file", "load_prompt", "render", "Finding", "PromptFile", "PromptError"):
        assert hasattr(prompts, name)


def test_params_passed_by_caller_are_checked():
    text = "Extract every date in the text below, one per line.\n###\n{{ text }}\n"
    assert not [f for f in lint_text(text) if f.rule == "params"]
    findings = [f for f in lint_text(text, params={"temperature": 0.7}) if f.rule == "params"]
    assert len(findings) == 1 and "temperature 0.7" in findings[0].message
    assert (findings[0].line, findings[0].column) == (1, 1) and findings[0].path == "<config>"


def test_variables_passed_by_caller_are_checked():
    text = "Answer the question in one sentence.\n###\n{{ context }}\n###\nQuestion: {{ question }}\nAnswer:\n"
    assert not [f for f in lint_text(text, variables={"context", "question", "expected"}) if f.rule == "template"]
    missing = [f for f in lint_text(text, variables={"context", "query"}) if f.rule == "template"]
    assert [(f.line, f.column, f.end_column) for f in missing] == [(5, 11, 25)]
    assert "'question'" in missing[0].message and missing[0].severity == "error"


def test_task_passed_by_caller_overrides_inference():
    text = "Tell me about {{ topic }}.\n"
    assert not lint_text(text)
    assert [f.rule for f in lint_text(text, task="generation")] == ["be-specific"]


def test_finding_to_dict_round_trip():
    finding = lint_text("Write a poem about the sea.\n", path="poem.prompt")[0]
    data = finding.to_dict()
    assert data["path"] == "poem.prompt" and data["rule"] == "be-specific" and data["practice"] == 3
    assert Finding(**{k: v for k, v in data.items()}) == finding


@pytest.mark.parametrize("marked", [
    'template: >\n  Describe the product\n  in ⟦a few sentences⟧.\n',
    'template: "Describe the\\tproduct in\\n ⟦a few sentences⟧."\n',
    "messages:\n  - role: user\n    content: 'Keep it ⟦fairly short⟧, it''s for Slack.'\n",
    "template: |2\n    Describe the product in ⟦several sentences⟧.\n",
])
def test_spans_inside_yaml_scalars(marked):
    text, span = unmark(marked)
    findings = [f for f in lint_text(text, path="p.yaml") if f.rule == "fluffy-wording"]
    assert [(f.line, f.column, f.end_line, f.end_column) for f in findings] == [span]


def test_names_used_only_in_jinja_tags_count_as_used():
    marked = ("variables: [q]\ntemplate: |\n  Answer the question using the documents, in one sentence.\n"
              "  {% for d in ⟦docs⟧ %}\n  <doc>{{ d }}</doc>\n  {% endfor %}\n  <question>{{ q }}</question>\n")
    text, span = unmark(marked)
    findings = [f for f in lint_text(text, path="p.yaml") if f.rule == "template"]
    assert [(f.line, f.column, f.end_line, f.end_column) for f in findings] == [span]
    assert lint_text(text.replace("[q]", "[docs, q]"), path="p.yaml") == []
