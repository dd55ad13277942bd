"""Which tokens a constrained request may produce next: llguidance matchers built from a JSON schema or a Lark grammar.

llguidance (guidance-ai, the engine behind Microsoft's guidance) reads the `tokenizers` tokenizer.json we already
load, compiles a JSON schema or Lark grammar lazily, and answers "which tokens may come next" as a bitmask in tens
of microseconds per step, so each request carries its own matcher and the sampler masks that row alone. A matcher
that reached the end of its grammar allows only EOS, which ends the request with finish_reason "stop".
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llguidance
import torch

from tunelab.engine.errors import EngineError
from tunelab.engine.sampling_params import SamplingParams

# Compact JSON: with flexible whitespace a weak model can pad forever between tokens.
_JSON_OPTIONS = {"whitespace_flexible": False}


class Constraint:
    """One request's grammar state: `mask(row)` before sampling, `advance(token)` after."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher = matcher
        self.vocab_size = vocab_size

    def mask(self, row: torch.Tensor) -> torch.Tensor:
        """`row` (logits over the model's vocabulary) with every token the grammar forbids set to -inf."""
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.reshape(-1).bool()[: row.shape[-1]].to(row.device)
        if self.matcher.is_error():
            raise EngineError(f"grammar: {self.matcher.get_error()}")
        out = torch.full_like(row, float("-inf"))
        out[: allowed.shape[0]] = row[: allowed.shape[0]].masked_fill(~allowed, float("-inf"))
        if not torch.isfinite(out).any():
            raise EngineError("grammar: no token can continue the output")
        return out

    def advance(self, token: int) -> None:
        if self.matcher.is_stopped():
            return  # the grammar is complete: the token is EOS, which ends the request
        if not self.matcher.consume_token(token):
            raise EngineError(f"grammar: token {token} rejected: {self.matcher.get_error()}")


def constraint_for(params: SamplingParams, tokenizer, eos_ids: list[int]) -> Constraint | None:
    """A fresh matcher for a constrained request (None when unconstrained); EngineError naming the field if the
    schema or grammar does not compile."""
    if not params.constrained:
        return None
    field = "json_schema" if params.json_schema is not None else "grammar"
    grammar = grammar_text(params)
    lltok = _lltokenizer(tokenizer, tuple(sorted(eos_ids)))
    error = llguidance.LLMatcher.validate_grammar(grammar, lltok)
    if error:
        raise EngineError(f"{field}: {error}")
    matcher = llguidance.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        raise EngineError(f"{field}: {matcher.get_error()}")
    return Constraint(matcher, lltok.vocab_size)


def grammar_text(params: SamplingParams) -> str:
    if params.json_schema is not None:
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(params.json_schema),
                                                                 overrides=_JSON_OPTIONS)
        except ValueError as exc:
            raise EngineError(f"json_schema: {exc}") from None
    return llguidance.LLMatcher.grammar_from_lark(params.grammar)


def json_block(schema: dict[str, Any]) -> str:
    """A schema as a Lark `%json` rule body, compact like `grammar_text`'s JSON."""
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_OPTIONS})


@lru_cache(maxsize=4)
def _lltokenizer(tokenizer, eos_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
    # Keyed by the Tokenizer object: one engine builds its token table once (about a second for a 150k vocabulary).
    return llguidance.LLTokenizer(tokenizer.backend.to_str(), eos_token=list(eos_ids))


def token_bytes(tokenizer, eos_ids: list[int], token_id: int) -> bytes:
    """The exact bytes a token stands for (a byte-level token can hold part of a UTF-8 character)."""
    return _lltokenizer(tokenizer, tuple(sorted(eos_ids))).decode_bytes([token_id])
