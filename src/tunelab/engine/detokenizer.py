"""Incremental, UTF-8-safe detokenization with stop strings.

Byte-level BPE tokens can end inside a multi-byte character, so decoding one token at a time would emit U+FFFD.
`tokenizers`' `DecodeStream` (Rust) keeps the few tokens of context this needs and hands out text only once it forms
whole characters. On top of it we find stop strings in the accumulated text, and hold the text streamed out back by
the length of the longest stop string minus one, so a stop string is never half-streamed and then retracted.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

FLUSH_CONTEXT = 5  # tokens of context when flushing bytes that never formed a character (as vLLM and TGI do)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self._stream = DecodeStream(skip_special_tokens=True)  # as Tokenizer.decode does
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far (stop string and after removed once hit)
        self.read_offset = 0  # first token whose text is not yet in `text`
        self.streamed = 0  # characters of `text` already handed out as deltas
        self.stop_hit: str | None = None

    def add(self, token_id: int) -> None:
        """Append one generated token; afterwards `stop_hit` says whether a stop string appeared."""
        self.ids.append(token_id)
        new = self._stream.step(self.tokenizer.backend, token_id)
        if not new:
            return  # an incomplete character (or a token that decodes to nothing yet): wait for more bytes
        before = len(self.text)
        self.text += new
        self.read_offset = len(self.ids)
        if self.stop:
            self._find_stop(before)

    def _find_stop(self, before: int) -> None:
        # Only a stop string overlapping the new text can be new.
        start = max(0, before - max(len(s) for s in self.stop) + 1)
        best = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            self.text = self.text[: best[0]]
            self.stop_hit = best[1]

    def delta(self, final: bool) -> str:
        """Text not yet handed out; while running, keep back what could still become a stop string."""
        end = len(self.text) if final or not self.stop else max(self.streamed, len(self.text) - self.holdback)
        out = self.text[self.streamed : end]
        self.streamed = end
        return out

    def final_text(self) -> str:
        """At the end, flush tokens that never formed a complete character (decode them as they are)."""
        if self.stop_hit is None and self.read_offset < len(self.ids):
            start = max(0, self.read_offset - FLUSH_CONTEXT)
            prefix = self.tokenizer.decode(self.ids[start : self.read_offset])
            full = self.tokenizer.decode(self.ids[start:])
            self.text += full[len(prefix) :]
            self.read_offset = len(self.ids)
        return self.text
