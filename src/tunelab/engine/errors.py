"""The engine's one error type."""

from __future__ import annotations


class EngineError(ValueError):
    """A request or engine setting that cannot be served, with the field at fault named in the message."""
