"""Loading prompt files: plain text (`.prompt`, `.txt`) and YAML (`.yaml`, `.yml`).

A loaded prompt keeps, for every piece of prompt text, where each of its lines sits
in the file. The linter reasons about the text and reports positions in the file, so
a finding inside a YAML block scalar points at the right line and column."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.prompts.errors import PromptError

TASKS = ("extraction", "classification", "qa", "summarization", "generation", "code", "chat")
PARAM_KEYS = ("model", "temperature", "max_tokens", "stop", "top_p", "presence_penalty", "frequency_penalty", "seed")
TOP_KEYS = ("template", "messages", "params", "examples", "task", "variables", "example_separator", "name", "description")
ROLES = ("system", "user", "assistant")
TEXT_SUFFIXES = (".prompt", ".txt")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Segment:
    """One piece of prompt text (the template, or one message's content)."""

    text: str
    role: str | None  # None for a completion-style template
    origins: list[tuple[int, int]]  # per text line: (1-based file line, 0-based column of its first char)
    editable: bool  # whether file lines map 1:1 onto text lines, so --fix may rewrite them
    # For quoted and folded YAML scalars, where text and file differ by escapes and line
    # folding: the file (line, column) of each character of `text` (None for whitespace).
    char_positions: list[tuple[int, int] | None] | None = None

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) in the file of a character offset into `text`."""
        offset = max(0, min(offset, len(self.text)))
        if self.char_positions is not None:
            if offset < len(self.text) and self.char_positions[offset] is not None:
                return self.char_positions[offset]
            # An end offset or whitespace: one column after the last mapped character before it.
            for k in range(offset - 1, -1, -1):
                if self.char_positions[k] is not None:
                    line, column = self.char_positions[k]
                    return line, column + 1
            return self.origins[0][0], self.origins[0][1] + 1
        index = self.text.count("\n", 0, offset)
        line_start = self.text.rfind("\n", 0, offset) + 1
        file_line, column = self.origins[min(index, len(self.origins) - 1)]
        return file_line, column + (offset - line_start) + 1


@dataclass
class PromptFile:
    path: str
    source: str
    template: str | None = None
    messages: list[dict[str, str]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    task: str | None = None
    variables: dict[str, Any] | None = None  # declared variables and their defaults; None when undeclared
    example_separator: str = "\n\n"
    segments: list[Segment] = field(default_factory=list)
    # "params.temperature", "variables.name", "examples.2" -> 1-based (line, column) of the value
    key_positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def load_prompt(path: str | Path) -> PromptFile:
    """Read a prompt file; raise PromptError naming the file and line when it is malformed."""
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptError(f"cannot read prompt file: {exc.strerror or exc}", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise PromptError("prompt file is not UTF-8 text", path=str(path)) from exc
    if path.suffix.lower() in YAML_SUFFIXES:
        return parse_yaml_prompt(source, str(path))
    return parse_text_prompt(source, str(path))


def parse_text_prompt(source: str, path: str = "<text>") -> PromptFile:
    """A template; an optional `---` YAML front matter block may carry params, task, variables, examples."""
    front = re.match(r"---[ \t]*\n(.*?\n)?---[ \t]*\n", source, re.S)
    if front is None:
        lines = source.split("\n")
        segment = Segment(source, None, [(i + 1, 0) for i in range(len(lines))], editable=True)
        return PromptFile(path=path, source=source, template=source, segments=[segment])
    header = front.group(1) or ""
    body = source[front.end():]
    # Parse the header as a YAML prompt whose template is the body, then restore line numbers.
    padded = header + "template: ''\n"
    pf = parse_yaml_prompt(padded if header.strip() else "template: ''\n", path)
    pf.source, pf.template = source, body
    pf.key_positions = {k: (line + 1, col) for k, (line, col) in pf.key_positions.items()}
    first = source.count("\n", 0, front.end()) + 1
    pf.segments = [Segment(body, None, [(first + i, 0) for i in range(len(body.split("\n")))], editable=True)]
    return pf


def parse_yaml_prompt(source: str, path: str) -> PromptFile:
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise PromptError(f"invalid YAML: {problem}", path=path, line=line) from exc
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise PromptError("a YAML prompt file must be a mapping with 'template:' or 'messages:'", path=path, line=1)
    nodes = {k.value: (k, v) for k, v in root.value}
    pf = PromptFile(path=path, source=source)
    fail = functools.partial(_field_error, pf, nodes)

    for key in data:
        if key not in TOP_KEYS:
            raise fail(f"unknown key; expected one of {', '.join(TOP_KEYS)}", str(key))
    if ("template" in data) == ("messages" in data):
        raise PromptError("give exactly one of 'template:' or 'messages:'", path=path, line=1)
    if "template" in data:
        _read_template(pf, data, nodes, fail)
    else:
        _read_messages(pf, data, nodes, fail)
    for key, read in _OPTIONAL_FIELDS.items():
        if key in data:
            read(pf, data, nodes, fail)
    return pf


def _field_error(pf: PromptFile, nodes: dict, message: str, key: str, node: yaml.Node | None = None) -> PromptError:
    """The error for one field, at the line of `node`, else of the key as recorded, else of the top-level key."""
    if node is not None:
        line = node.start_mark.line + 1
    elif key in pf.key_positions:
        line = pf.key_positions[key][0]
    else:
        line = nodes[key][0].start_mark.line + 1 if key in nodes else None
    return PromptError(message, path=pf.path, line=line, field=key)


def _read_template(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    if not isinstance(data["template"], str):
        raise fail("expected a string (use a '|' block for multi-line text)", "template")
    pf.template = data["template"]
    pf.segments.append(_segment(pf.source, nodes["template"][1], None))


def _read_messages(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    node = nodes["messages"][1]
    if not isinstance(data["messages"], list) or not data["messages"]:
        raise fail("expected a non-empty list of {role, content}", "messages")
    pf.messages = []
    for i, (item, item_node) in enumerate(zip(data["messages"], node.value)):
        where = f"messages[{i}]"
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            raise fail("expected a mapping with exactly 'role' and 'content'", where, item_node)
        if item["role"] not in ROLES:
            raise fail(f"role must be one of {', '.join(ROLES)}, got {item['role']!r}", where + ".role", item_node)
        if not isinstance(item["content"], str):
            raise fail("content must be a string", where + ".content", item_node)
        pf.messages.append({"role": item["role"], "content": item["content"]})
        content_node = next(v for k, v in item_node.value if k.value == "content")
        pf.segments.append(_segment(pf.source, content_node, item["role"]))


def _read_params(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    params = data["params"]
    if not isinstance(params, dict):
        raise fail("expected a mapping of model, temperature, max_tokens, stop", "params")
    pf.key_positions["params"] = (nodes["params"][0].start_mark.line + 1, nodes["params"][0].start_mark.column + 1)
    for k, v in nodes["params"][1].value:
        if k.value not in PARAM_KEYS:
            raise fail(f"unknown parameter; expected one of {', '.join(PARAM_KEYS)}", f"params.{k.value}", k)
        pf.key_positions[f"params.{k.value}"] = (k.start_mark.line + 1, k.start_mark.column + 1)
    _check_params(params, fail)
    pf.params = dict(params)


def _read_task(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    if data["task"] not in TASKS:
        raise fail(f"task must be one of {', '.join(TASKS)}, got {data['task']!r}", "task")
    pf.task = data["task"]


def _read_variables(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    declared = data["variables"]
    if isinstance(declared, list) and all(isinstance(v, str) for v in declared):
        pf.variables = {v: None for v in declared}
    elif isinstance(declared, dict):
        pf.variables = dict(declared)
    else:
        raise fail("expected a list of names or a mapping of name: default", "variables")
    vnode = nodes["variables"][1]
    items = vnode.value if isinstance(vnode, yaml.SequenceNode) else [k for k, _ in vnode.value]
    for item in items:
        pf.key_positions[f"variables.{item.value}"] = (item.start_mark.line + 1, item.start_mark.column + 1)


def _read_examples(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    examples = data["examples"]
    if not isinstance(examples, list) or not all(isinstance(e, dict) and e for e in examples):
        raise fail("expected a list of mappings such as {input: ..., output: ...}", "examples")
    pf.examples = examples
    for i, item in enumerate(nodes["examples"][1].value):
        pf.key_positions[f"examples.{i}"] = (item.start_mark.line + 1, item.start_mark.column + 1)


def _read_separator(pf: PromptFile, data: dict, nodes: dict, fail) -> None:
    if not isinstance(data["example_separator"], str):
        raise fail("expected a string", "example_separator")
    pf.example_separator = data["example_separator"]


# In this order: an error names the first bad field as before.
_OPTIONAL_FIELDS = {"params": _read_params, "task": _read_task, "variables": _read_variables,
                    "examples": _read_examples, "example_separator": _read_separator}


def _check_params(params: dict, fail) -> None:
    temperature = params.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
        raise fail("temperature must be a number between 0 and 2", "params.temperature")
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise fail("max_tokens must be a positive integer", "params.max_tokens")
    stop = params.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise fail("stop must be a string or a list of strings", "params.stop")


def _segment(source: str, node: yaml.Node, role: str | None) -> Segment:
    """Map each line of a YAML scalar's value back to the file."""
    text = node.value
    lines = source.split("\n")
    n = len(text.split("\n"))
    if node.style == "|":
        # A literal block keeps every line verbatim below its header, at one indentation.
        first = node.start_mark.line + 1
        # The block's indentation is what the file has and the value lacks (an explicit
        # indicator such as `|2` keeps extra spaces in the value).
        indent = 0
        value_line = next((t for t in text.split("\n") if t.strip()), "")
        for raw in lines[first:node.end_mark.line + 1]:
            if raw.strip():
                indent = (len(raw) - len(raw.lstrip(" "))) - (len(value_line) - len(value_line.lstrip(" ")))
                break
        return Segment(text, role, [(first + 1 + i, indent) for i in range(n)], editable=True)
    quote = 1 if node.style in ("'", '"') else 0
    segment = Segment(text, role, [(node.start_mark.line + 1, node.start_mark.column + quote)] * n, editable=False)
    # Match the value's characters, in order, against the file text the scalar spans; escapes
    # and folded line breaks are the only characters that differ, and they are skipped.
    positions, cursor, end = [], node.start_mark.index, node.end_mark.index
    for ch in text:
        found = -1 if ch.isspace() else source.find(ch, cursor, end)
        if found < 0:
            positions.append(None)
            continue
        cursor = found + 1
        line_start = source.rfind("\n", 0, found) + 1
        positions.append((source.count("\n", 0, found) + 1, found - line_start + 1))
    segment.char_positions = positions
    return segment


def looks_like_prompt_yaml(source: str) -> bool:
    """Whether a YAML file found while walking a directory is a prompt file (not some other config)."""
    return re.search(r"^(template|messages)\s*:", source, re.M) is not None
