"""Chat-prompt encoding: messages → the chat template's text → token ids, in one place.

The template already writes the special tokens it wants (BOS included), so the text is encoded without adding
them again, as transformers' `apply_chat_template(tokenize=True)` does. `tunelab serve`, `tunelab models generate
--chat` and the engine provider of `tunelab eval` all encode through here, so one prompt gives one token sequence.
"""

from __future__ import annotations

from typing import Any


def encode_chat(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template, ending in the assistant's turn."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
    return tokenizer.encode(text, add_special_tokens=False)
