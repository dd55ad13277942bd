"""`tunelab lint` output formats and exit codes, and `tunelab prompt render`."""

import json

import jsonschema
import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.prompts import lint_file

runner = CliRunner()

WARN_ONLY = "Summarize the review below in one sentence.\n\n{{ review }}\n"
WITH_ERROR = "Summarize the review below in one sentence.\n###\n{{ review\n"
GOOD = 'Summarize the review below in one sentence.\n\n"""\n{{ review }}\n"""\n'

# The parts of the SARIF 2.1.0 schema (OASIS) that our log uses, transcribed by hand:
# required properties, enums and the minimums on region coordinates.
LEVEL = {"enum": ["none", "note", "warning", "error"]}
POSITIVE = {"type": "integer", "minimum": 1}
REGION = {"type": "object", "required": ["startLine"], "properties": {
    "startLine": POSITIVE, "startColumn": POSITIVE, "endLine": POSITIVE, "endColumn": POSITIVE}}
PHYSICAL = {"type": "object", "required": ["artifactLocation", "region"], "properties": {
    "artifactLocation": {"type": "object", "required": ["uri"]}, "region": REGION}}
RESULT = {"type": "object", "required": ["message"], "properties": {
    "ruleId": {"type": "string"}, "ruleIndex": {"type": "integer", "minimum": -1}, "level": LEVEL,
    "message": {"type": "object", "anyOf": [{"required": ["text"]}, {"required": ["id"]}]},
    "locations": {"type": "array", "items": {"type": "object", "properties": {"physicalLocation": PHYSICAL}}}}}
RULE = {"type": "object", "required": ["id"], "properties": {
    "id": {"type": "string"}, "shortDescription": {"type": "object", "required": ["text"]},
    "defaultConfiguration": {"type": "object", "properties": {"level": LEVEL}}}}
DRIVER = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "rules": {"type": "array", "items": RULE}}}
RUN = {"type": "object", "required": ["tool"], "properties": {
    "tool": {"type": "object", "required": ["driver"], "properties": {"driver": DRIVER}},
    "results": {"type": "array", "items": RESULT}}}
SARIF_SUBSET = {"type": "object", "required": ["version", "runs"], "properties": {
    "version": {"enum": ["2.1.0"]}, "$schema": {"type": "string"}, "runs": {"type": "array", "items": RUN}}}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "warn.prompt").write_text(WARN_ONLY)
    (tmp_path / "error.prompt").write_text(WITH_ERROR)
    (tmp_path / "good.prompt").write_text(GOOD)
    (tmp_path / "other.yaml").write_text("providers: []\n")  # not a prompt: skipped when walking a directory
    (tmp_path / "chat.yaml").write_text("messages:\n  - role: user\n    content: Hi\n")
    (tmp_path / "requirements.txt").write_text("jinja2>=3\n")  # not a prompt: no variable, not under prompts/
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "ask.txt").write_text("Write a poem about the sea.\n")
    return tmp_path


def test_json_findings_have_the_documented_keys(files):
    result = runner.invoke(app, ["lint", str(files / "warn.prompt"), "--format", "json"])
    data = json.loads(result.stdout)
    assert result.exit_code == 0
    assert [d["rule"] for d in data] == ["delimit-context"]
    keys = {"path", "rule", "severity", "practice", "message", "line", "column", "end_line", "end_column", "fix"}
    assert keys <= set(data[0])
    assert (data[0]["line"], data[0]["column"], data[0]["end_line"], data[0]["end_column"]) == (3, 1, 3, 13)
    assert data[0]["practice"] == 2 and data[0]["severity"] == "warning"


def test_exit_codes_follow_fail_on(files):
    warn = str(files / "warn.prompt")
    assert runner.invoke(app, ["lint", warn]).exit_code == 0
    assert runner.invoke(app, ["lint", warn, "--fail-on", "warning"]).exit_code == 1
    assert runner.invoke(app, ["lint", str(files / "error.prompt")]).exit_code == 1
    assert runner.invoke(app, ["lint", str(files / "good.prompt"), "--fail-on", "info"]).exit_code == 0
    assert runner.invoke(app, ["lint", warn, "--fail-on", "fatal"]).exit_code == 2
    assert runner.invoke(app, ["lint", str(files / "missing.prompt")]).exit_code == 2


def test_directory_walk_lints_prompt_files_only(files):
    result = runner.invoke(app, ["lint", str(files), "--format", "json"])
    paths = {d["path"] for d in json.loads(result.stdout)}
    assert paths == {str(files / "warn.prompt"), str(files / "error.prompt"), str(files / "prompts" / "ask.txt")}
    assert result.exit_code == 1


def test_sarif_is_valid_and_matches_findings(files):
    result = runner.invoke(app, ["lint", str(files), "--format", "sarif"])
    log = json.loads(result.stdout)
    jsonschema.validate(log, SARIF_SUBSET)
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    run = log["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert {"instructions-first", "delimit-context", "be-specific", "show-format", "few-shot-consistency",
            "fluffy-wording", "say-what-to-do", "leading-words", "params", "template"} <= set(rule_ids)
    findings = lint_file(files / "warn.prompt") + lint_file(files / "error.prompt") + lint_file(files / "prompts" / "ask.txt")
    got = sorted((r["ruleId"], r["locations"][0]["physicalLocation"]["region"]["startLine"],
                  r["locations"][0]["physicalLocation"]["region"]["startColumn"]) for r in run["results"])
    assert got == sorted((f.rule, f.line, f.column) for f in findings)
    for r in run["results"]:
        assert rule_ids[r["ruleIndex"]] == r["ruleId"]
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels["template"] == "error" and levels["delimit-context"] == "warning"


def test_text_output_underlines_the_span(files):
    result = runner.invoke(app, ["lint", str(files / "warn.prompt")])
    lines = result.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "delimit-context" in line)
    assert f"{files / 'warn.prompt'}:3:1:" in lines[head]
    source, carets = lines[head + 1], lines[head + 2]
    start = source.index("{{ review }}")
    assert carets.index("^") == start and carets.count("^") == len("{{ review }}")
    assert "fix:" in lines[head + 3]


def test_render_command(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("messages:\n  - role: system\n    content: Reply with the capital only.\n"
                    "  - role: user\n    content: \"{{ country }}\"\n"
                    "examples:\n  - input: France\n    output: Paris\n  - input: Japan\n    output: Tokyo\n")
    result = runner.invoke(app, ["prompt", "render", str(path), "--var", "country=Peru", "--examples", "1"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)[-1] == {"role": "user", "content": "Peru"}
    assert len(json.loads(result.stdout)) == 4
    text = tmp_path / "t.prompt"
    text.write_text("Translate into {lang}: {{ word }}")
    result = runner.invoke(app, ["prompt", "render", str(text), "--var", "lang=German", "--var", "word=a=b"])
    assert result.stdout == "Translate into German: a=b\n"
    result = runner.invoke(app, ["prompt", "render", str(text), "--var", "lang=German"])
    assert result.exit_code == 2 and "'word'" in result.output and str(text) in result.output
