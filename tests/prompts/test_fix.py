"""`tunelab lint --fix`: mechanical fixes, atomic rewrite, nothing lost."""

import os
import stat

import pytest
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.prompts import PromptError, lint_file, load_prompt, render
from tunelab.prompts.fix import _check_nothing_lost, fix_file

runner = CliRunner()


@pytest.mark.parametrize("name,before,after", [
    ("fence-bare",
     "Summarize the review below in one sentence.\n\n{{ review }}\n",
     'Summarize the review below in one sentence.\n\n"""\n{{ review }}\n"""\n'),
    ("fence-labelled",
     "Translate the message below into Spanish.\nMessage: {message}\n",
     'Translate the message below into Spanish.\nMessage: """\n{message}\n"""\n'),
    ("move-and-fence",
     "{{ article }}\n\nSummarize the article above in 3 bullet points.\n",
     'Summarize the article below in 3 bullet points.\n\n"""\n{{ article }}\n"""\n'),
    ("yaml-literal",
     "task: generation\ntemplate: |\n  Text: {{ text }}\n\n  Translate the text above into German, in a formal tone.\n",
     'task: generation\ntemplate: |\n  Translate the text below into German, in a formal tone.\n\n  Text: """\n  {{ text }}\n  """\n'),
])
def test_fix_rewrites_exactly(tmp_path, name, before, after):
    path = tmp_path / ("p.yaml" if name.startswith("yaml") else "p.prompt")
    path.write_text(before)
    assert fix_file(path) >= 1
    assert path.read_text() == after
    assert not {f.rule for f in lint_file(path)} & {"delimit-context", "instructions-first"}
    assert os.listdir(tmp_path) == [path.name]  # the temporary file was renamed over, not left behind


def test_fixed_yaml_still_loads_and_renders(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("template: |\n  {{ email }}\n\n  Write a polite reply to the email above in under 100 words.\n")
    fix_file(path)
    data = yaml.safe_load(path.read_text())
    assert data["template"].startswith("Write a polite reply to the email below")
    out = render(load_prompt(path), {"email": "Where is my parcel?"})
    assert out == 'Write a polite reply to the email below in under 100 words.\n\n"""\nWhere is my parcel?\n"""\n'


def test_unfixable_layout_is_left_alone(tmp_path):
    path = tmp_path / "p.yaml"
    original = 'template: "Summarize this in one sentence: {{ text }}"\n'
    path.write_text(original)
    assert fix_file(path) == 0 and path.read_text() == original


def test_cli_fix_preserves_mode(tmp_path):
    path = tmp_path / "p.prompt"
    path.write_text("Summarize the review below in one sentence.\n\n{{ review }}\n")
    os.chmod(path, 0o640)
    result = runner.invoke(app, ["lint", "--fix", str(path)])
    assert result.exit_code == 0 and "fixed 1" in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert '"""\n{{ review }}\n"""' in path.read_text()


def test_guard_refuses_to_drop_content():
    with pytest.raises(PromptError, match="drop"):
        _check_nothing_lost("keep me\nand me\n", "keep me\n", "p.prompt")
    _check_nothing_lost("a\n\nSummarize the text above.\n", 'Summarize the text below.\n"""\na\n"""\n', "p.prompt")
