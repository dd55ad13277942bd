"""What the linter reports: a finding with its rule, practice, span and suggested fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Edit:
    """A mechanical fix: replace file lines `start_line..end_line` (1-based, inclusive) with `lines`."""

    start_line: int
    end_line: int
    lines: tuple[str, ...]


@dataclass
class Finding:
    path: str
    rule: str
    severity: str  # error | warning | info
    practice: int | str  # OpenAI practice number 2-8, or "params" / "template"
    message: str
    line: int  # 1-based
    column: int  # 1-based
    end_line: int
    end_column: int  # 1-based, exclusive (the column just after the span), as in SARIF
    fix: str
    title: str = ""
    edit: Edit | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rule": self.rule,
            "severity": self.severity,
            "practice": self.practice,
            "title": self.title,
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
            "fix": self.fix,
        }
