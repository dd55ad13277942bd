"""Linter configuration: `[tool.tunelab.lint]` in the nearest pyproject.toml that has
one (searched upward from the linted path), plus inline `{# tunelab: disable=rule #}`."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tunelab.prompts.errors import PromptError
from tunelab.prompts.finding import SEVERITIES

INLINE_DISABLE = re.compile(r"(?:\{#|#)\s*tunelab:\s*disable=([A-Za-z][A-Za-z, -]*?)\s*(?:#\}|$)", re.M)


@dataclass(frozen=True)
class LintConfig:
    disable: frozenset[str] = frozenset()
    severity: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # the pyproject.toml it came from


def find_config(path: str | Path) -> LintConfig:
    """The configuration that applies to `path` (a file or a directory)."""
    start = Path(path).resolve()
    return _config_for_dir(str(start if start.is_dir() else start.parent))


@lru_cache(maxsize=256)
def _config_for_dir(folder: str) -> LintConfig:
    for directory in (Path(folder), *Path(folder).parents):
        candidate = directory / "pyproject.toml"
        if not candidate.is_file():
            continue
        text = candidate.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line = re.search(r"line (\d+)", str(exc))
            raise PromptError(f"invalid TOML: {exc}", path=str(candidate), line=int(line.group(1)) if line else None) from exc
        section = data.get("tool", {}).get("tunelab", {}).get("lint")
        if section is not None:
            return parse_config(section, str(candidate), text)
    return LintConfig()


def parse_config(section: dict, source: str = "<config>", text: str = "") -> LintConfig:
    from tunelab.prompts.rules import RULES_BY_ID

    def fail(message: str, key: str, needle: str) -> PromptError:
        line = next((i + 1 for i, raw in enumerate(text.split("\n")) if needle in raw), None)
        return PromptError(message, path=source, line=line, field=f"tool.tunelab.lint.{key}")

    known = ", ".join(RULES_BY_ID)
    for key in section:
        if key not in ("disable", "severity"):
            raise fail("unknown setting; expected 'disable' or 'severity'", key, key)
    disable = section.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(r, str) for r in disable):
        raise fail("expected a list of rule ids", "disable", "disable")
    for rule in disable:
        if rule not in RULES_BY_ID:
            raise fail(f"unknown rule {rule!r}; rules are {known}", "disable", rule)
    severity = section.get("severity", {})
    if not isinstance(severity, dict):
        raise fail("expected a table of rule = \"error\" | \"warning\" | \"info\"", "severity", "severity")
    for rule, level in severity.items():
        if rule not in RULES_BY_ID:
            raise fail(f"unknown rule {rule!r}; rules are {known}", f"severity.{rule}", rule)
        if level not in SEVERITIES:
            raise fail(f"severity must be one of {', '.join(SEVERITIES)}, got {level!r}", f"severity.{rule}", rule)
    return LintConfig(frozenset(disable), dict(severity), source)


def inline_disables(source: str) -> tuple[set[str], dict[int, set[str]]]:
    """Rules disabled for the whole file (comment alone on its line) and per line (comment after content)."""
    whole, per_line = set(), {}
    lines = source.split("\n")
    for m in INLINE_DISABLE.finditer(source):
        rules = {r.strip() for r in m.group(1).split(",") if r.strip()}
        index = source.count("\n", 0, m.start())
        line = lines[index]
        column = m.start() - (source.rfind("\n", 0, m.start()) + 1)
        rest = (line[:column] + line[column + len(m.group(0)):]).strip()
        if rest in ("", "-", "|"):
            whole |= rules
        else:
            per_line.setdefault(index + 1, set()).update(rules)
    return whole, per_line
