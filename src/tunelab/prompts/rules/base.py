"""The shape every rule shares: metadata plus a check over one prompt reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tunelab.prompts.finding import Edit, Finding
from tunelab.prompts.reading import Reading


@dataclass
class LintContext:
    reading: Reading
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    variables: set[str] | None = None  # names the caller will provide; None when unknown

    @property
    def prompt(self):
        return self.reading.prompt


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    practice: int | str
    severity: str
    summary: str  # one line for SARIF and --help
    check: Callable[[LintContext], list[Finding]] = field(repr=False, compare=False)

    def at(self, ctx: LintContext, seg: int, start: int, end: int, message: str, fix: str,
           *, severity: str | None = None, edit: Edit | None = None) -> Finding:
        """A finding spanning `start:end` of segment `seg`."""
        line, column, end_line, end_column = ctx.reading.span(seg, start, end)
        return self.at_position(ctx, (line, column, end_line, end_column), message, fix, severity=severity, edit=edit)

    def at_position(self, ctx: LintContext, span: tuple[int, int, int, int], message: str, fix: str,
                    *, severity: str | None = None, edit: Edit | None = None) -> Finding:
        line, column, end_line, end_column = span
        return Finding(path=ctx.path, rule=self.id, severity=severity or self.severity, practice=self.practice,
                       message=message, line=line, column=column, end_line=end_line, end_column=end_column,
                       fix=fix, title=self.title, edit=edit)
