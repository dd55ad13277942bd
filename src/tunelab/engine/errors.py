"""The engine's base error type: `async_engine` derives `QueueFull` from it; `EngineFailure`
(a failed step, not a bad request) is deliberately a `RuntimeError` instead."""

from __future__ import annotations


class EngineError(ValueError):
    """A request or engine setting that cannot be served, with the field at fault named in the message."""
