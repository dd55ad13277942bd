"""The one error type of `tunelab.lora`."""

from __future__ import annotations


class LoraError(ValueError):
    """Bad LoRA configuration, a target that matches nothing, or an adapter file that does not fit the model.

    Messages name the field, key or module and say what was expected, so the user can fix the input without
    reading our source.
    """
