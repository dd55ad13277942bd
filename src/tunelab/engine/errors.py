"""The engine's base error type, and `UnknownAdapter`, the one refusal a caller answers differently (a server says
"no such model"). `async_engine` derives `QueueFull` from `EngineError` too; `EngineFailure` (a failed step, not a bad
request) is deliberately a `RuntimeError` instead."""

from __future__ import annotations


class EngineError(ValueError):
    """A request or engine setting that cannot be served, with the field at fault named in the message."""


class UnknownAdapter(EngineError):
    """A request named an adapter the engine has not loaded. `LLM.make_sequence` is where a request's adapter is
    checked, once: the server answers this error instead of checking itself, and LoRA's `routed` takes the names
    it is given."""

    def __init__(self, name: str, loaded: list[str]) -> None:
        super().__init__(f"adapter {name!r} is not loaded; loaded adapters: {loaded or 'none'}")
        self.name, self.loaded = name, loaded
