"""The one error type of the prompts package.

Every message names the file and, when known, the line and the field, because a
prompt error is always fixed by editing a specific place in a specific file."""

from __future__ import annotations


class PromptError(Exception):
    """A prompt file cannot be loaded, rendered or linted as written."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "") + ": "
        if field is not None:
            where += f"field '{field}': "
        super().__init__(where + message)
