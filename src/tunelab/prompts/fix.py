"""`tunelab lint --fix`: apply the mechanical fixes and rewrite the file atomically.

Fixes are applied one at a time, re-linting in between, because each edit moves the
lines the next finding points at. Before writing, every original non-blank line must
still be present: a fix may move and fence text, never drop it."""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter
from pathlib import Path

from tunelab.prompts.config import LintConfig, find_config
from tunelab.prompts.errors import PromptError
from tunelab.prompts.finding import Edit
from tunelab.prompts.linter import lint_prompt
from tunelab.prompts.prompt_file import YAML_SUFFIXES, parse_text_prompt, parse_yaml_prompt

MAX_ROUNDS = 50


def fix_file(path: str | Path, config: LintConfig | None = None) -> int:
    """Apply every mechanical fix to `path`; return how many were applied."""
    path = Path(path)
    config = config if config is not None else find_config(path)
    original = path.read_text(encoding="utf-8")
    text, applied = fix_text(original, str(path), config)
    if applied:
        _check_nothing_lost(original, text, str(path))
        _write_atomically(path, text)
    return applied


def fix_text(text: str, path: str, config: LintConfig | None = None) -> tuple[str, int]:
    applied = 0
    for _ in range(MAX_ROUNDS):
        parse = parse_yaml_prompt if path.lower().endswith(YAML_SUFFIXES) else parse_text_prompt
        findings = lint_prompt(parse(text, path), config=config)
        edit = next((f.edit for f in findings if f.edit is not None), None)
        if edit is None:
            break
        text = apply_edit(text, edit)
        applied += 1
    return text, applied


def apply_edit(text: str, edit: Edit) -> str:
    lines = text.split("\n")
    return "\n".join(lines[: edit.start_line - 1] + list(edit.lines) + lines[edit.end_line:])


def _check_nothing_lost(before: str, after: str, path: str) -> None:
    # Count characters, not lines: fencing splits "Text: {{ t }}" over lines and moving
    # an instruction reorders them. The move rewrites "above" to "below", so normalise that.
    def chars(text: str) -> Counter:
        return Counter(re.sub(r"\s+", "", text.replace("above", "below")))

    lost = chars(before) - chars(after)
    if lost:
        raise PromptError(f"--fix would drop the characters {''.join(sorted(lost.elements()))[:40]!r}; "
                          "the file was left unchanged", path=path)


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
