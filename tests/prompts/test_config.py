"""pyproject.toml [tool.tunelab.lint] and inline disable comments."""

import pytest

from tunelab.prompts import PromptError, find_config, lint_file, lint_text

BAD = "{{ article }}\n\nSummarize the article above.\n"


def rules(findings):
    return sorted({f.rule for f in findings})


def test_config_found_by_walking_up(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.tunelab.lint]\ndisable = ["be-specific"]\nseverity = { delimit-context = "error" }\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    # A nearer pyproject without the section does not stop the search.
    (tmp_path / "a" / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    prompt = nested / "s.prompt"
    prompt.write_text(BAD)
    config = find_config(prompt)
    assert config.source == str(tmp_path / "pyproject.toml")
    findings = lint_file(prompt)
    assert "be-specific" not in rules(findings)
    assert [f.severity for f in findings if f.rule == "delimit-context"] == ["error"]
    assert "be-specific" in rules(lint_text(BAD, path="s.prompt"))  # no config: the rule is on


@pytest.mark.parametrize("body,field", [
    ('disable = ["be-spcific"]', "tool.tunelab.lint.disable"),
    ('severity = { params = "fatal" }', "tool.tunelab.lint.severity.params"),
    ('ignore = ["params"]', "tool.tunelab.lint.ignore"),
])
def test_bad_config_names_file_line_and_field(tmp_path, body, field):
    (tmp_path / "pyproject.toml").write_text(f"[tool.tunelab.lint]\n{body}\n")
    (tmp_path / "s.prompt").write_text(BAD)
    with pytest.raises(PromptError) as err:
        lint_file(tmp_path / "s.prompt")
    assert err.value.field == field and err.value.line == 2 and "pyproject.toml" in str(err.value)


def test_inline_disable_whole_file():
    text = "{# tunelab: disable=be-specific, instructions-first #}\n" + BAD
    assert rules(lint_text(text, path="s.prompt")) == ["delimit-context"]


def test_inline_disable_one_line_only():
    text = "Summarize both notes below in 2 sentences.\n{{ a }} {# tunelab: disable=delimit-context #}\n\n{{ b }}\n"
    findings = [f for f in lint_text(text, path="s.prompt") if f.rule == "delimit-context"]
    assert [f.line for f in findings] == [4]


def test_yaml_comment_disable():
    text = "# tunelab: disable=params\nparams:\n  temperature: 0.9\ntask: extraction\ntemplate: |\n  Extract the dates, one per line.\n  ###\n  {{ t }}\n"
    assert "params" not in rules(lint_text(text, path="p.yaml"))
    assert "params" in rules(lint_text(text.split("\n", 1)[1], path="p.yaml"))
