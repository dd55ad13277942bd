"""Loading and rendering prompt files."""

import jinja2
import pytest

from tunelab.prompts import PromptError, load_prompt, render
from tunelab.prompts.render import format_examples


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_single_brace_renders_like_str_format(tmp_path):
    text = "Translate the text below into {language}.\n###\n{text}\n###\nJSON stays: {\"a\": 1}"
    path = write(tmp_path, "t.prompt", text)
    got = render(load_prompt(path), {"language": "French", "text": "Bonjour {not a var}"})
    # str.format is the independent reference for single-brace placeholders (JSON braces escaped for it).
    expected = text.replace('{"a": 1}', '{{"a": 1}}').format(language="French", text="Bonjour {not a var}")
    assert got == expected


def test_jinja_template_renders_like_jinja(tmp_path):
    text = "Summarize in {{ n }} bullets.\n{% for d in docs %}- {{ d | upper }}\n{% endfor %}{# tunelab: disable=be-specific #}"
    path = write(tmp_path, "t.prompt", text)
    values = {"n": 3, "docs": ["a", "b"]}
    assert render(load_prompt(path), values) == jinja2.Template(text, keep_trailing_newline=True).render(**values)


def test_undefined_variable_names_file_variable_and_line(tmp_path):
    path = write(tmp_path, "t.prompt", "Summarize the text below.\n###\n{{ text }}\n")
    with pytest.raises(PromptError) as err:
        render(load_prompt(path), {})
    message = str(err.value)
    assert str(path) in message and "'text'" in message and ":3:" in message


def test_undefined_variable_in_yaml_points_at_file_line(tmp_path):
    path = write(tmp_path, "p.yaml", "task: qa\ntemplate: |\n  Answer the question.\n  Q: {{ question }}\n  A:\n")
    with pytest.raises(PromptError) as err:
        render(load_prompt(path), {})
    assert f"{path}:4:" in str(err.value) and "'question'" in str(err.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "p.yaml", "task: qa\nparams:\n  temperature: 0\n template: [oops\n")
    with pytest.raises(PromptError) as err:
        load_prompt(path)
    assert str(err.value).startswith(f"{path}:4:") or str(err.value).startswith(f"{path}:5:")
    assert "invalid YAML" in str(err.value)


@pytest.mark.parametrize("text,field,line", [
    ("template: hi\ntemprature: 0\n", "temprature", 2),
    ("template: hi\nparams:\n  temperature: 0\n  max_token: 5\n", "params.max_token", 4),
    ("template: hi\ntask: poetry\n", "task", 2),
    ("template: hi\nparams:\n  temperature: hot\n", "params.temperature", 3),
    ("messages:\n  - role: robot\n    content: hi\n", "messages[0].role", 2),
    ("template: hi\nmessages: []\n", None, 1),
])
def test_yaml_schema_errors_name_field_and_line(tmp_path, text, field, line):
    path = write(tmp_path, "p.yaml", text)
    with pytest.raises(PromptError) as err:
        load_prompt(path)
    assert err.value.line == line and err.value.field == field and str(path) in str(err.value)


def test_examples_inserted_before_open_slot_with_consistent_separator(tmp_path):
    path = write(tmp_path, "p.yaml", (
        "example_separator: \"\\n###\\n\"\n"
        "template: |\n  Classify each review as positive or negative.\n\n  Review: {{ review }}\n  Sentiment:\n"
        "examples:\n  - review: Great food\n    sentiment: positive\n  - review: Cold soup\n    sentiment: negative\n"
        "  - review: Loved it\n    sentiment: positive\n"))
    prompt = load_prompt(path)
    full = render(prompt, {"review": "Slow service"})
    assert full == ("Classify each review as positive or negative.\n\n"
                    "Review: Great food\nSentiment: positive\n###\nReview: Cold soup\nSentiment: negative\n###\n"
                    "Review: Loved it\nSentiment: positive\n###\nReview: Slow service\nSentiment:\n")
    two = render(prompt, {"review": "Slow service"}, examples=2)
    assert "Loved it" not in two and two.count("\n###\n") == 2
    assert render(prompt, {"review": "x"}, examples=0) == "Classify each review as positive or negative.\n\nReview: x\nSentiment:\n"


def test_examples_variable_places_block(tmp_path):
    path = write(tmp_path, "p.yaml", "template: |\n  Label it.\n  {{ examples }}\n  Text: {{ t }}\n  Label:\n"
                                     "examples:\n  - text: a\n    label: x\n  - text: b\n    label: y\n")
    assert render(load_prompt(path), {"t": "c"}) == "Label it.\nText: a\nLabel: x\n\nText: b\nLabel: y\nText: c\nLabel:\n"
    assert format_examples([{"q": 1, "a": 2}], "|") == "Q: 1\nA: 2"


def test_messages_render_with_few_shot_turns(tmp_path):
    path = write(tmp_path, "p.yaml", (
        "messages:\n  - role: system\n    content: Answer with the capital city only.\n"
        "  - role: user\n    content: \"{{ country }}\"\n"
        "examples:\n  - input: France\n    output: Paris\n  - input: Japan\n    output: Tokyo\n"))
    out = render(load_prompt(path), {"country": "Peru"}, examples=1)
    assert out == [
        {"role": "system", "content": "Answer with the capital city only."},
        {"role": "user", "content": "France"}, {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "Peru"},
    ]


def test_front_matter_prompt(tmp_path):
    path = write(tmp_path, "p.prompt", "---\ntask: extraction\nparams:\n  temperature: 0\n---\nExtract the dates, one per line.\n###\n{{ text }}\n")
    prompt = load_prompt(path)
    assert prompt.task == "extraction" and prompt.params == {"temperature": 0}
    assert prompt.key_positions["params.temperature"][0] == 4
    assert render(prompt, {"text": "May 1"}) == "Extract the dates, one per line.\n###\nMay 1\n"
    assert prompt.segments[0].position(0) == (6, 1)


def test_declared_variable_defaults_fill_in(tmp_path):
    path = write(tmp_path, "p.yaml", "variables:\n  tone: friendly\n  text: null\ntemplate: \"Rewrite in a {{ tone }} tone: {{ text }}\"\n")
    assert render(load_prompt(path), {"text": "hi"}) == "Rewrite in a friendly tone: hi"


def test_missing_file_is_a_prompt_error(tmp_path):
    with pytest.raises(PromptError, match="cannot read"):
        load_prompt(tmp_path / "nope.prompt")
