"""What OpenAI's response bodies and stream chunks look like, built from the engine's RequestOutputs.

One `ChoiceView` per choice remembers what it has already streamed (text, logprob entries, whether its role was
sent), so the same code serves the whole body and the incremental chunks. Token strings in logprobs come from each
token's exact bytes: a token holding part of a UTF-8 character shows as OpenAI shows it, `bytes:\\xe6`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.engine import RequestOutput
from tunelab.engine.grammar import token_bytes
from tunelab.serve.tools import parse_tool_calls


class TokenText:
    """Token id -> (string, bytes) for logprobs, cached."""

    def __init__(self, llm):
        self.tokenizer, self.eos = llm.tokenizer, sorted(llm.eos)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        if token_id not in self._cache:
            raw = token_bytes(self.tokenizer, self.eos, token_id)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
            self._cache[token_id] = (text, list(raw))
        return self._cache[token_id]


@dataclass
class ChoiceView:
    index: int
    prefix: str = ""  # echoed prompt (completions)
    tools: bool = False  # the output is tool calls or text under a tool grammar: sent whole at the end
    sent_logprobs: int = 0
    offset: int = 0  # characters so far, for completions' text_offset
    started: bool = False


# ---------------------------------------------------------------------- chat
def chat_choice(out: RequestOutput, view: ChoiceView, tokens: TokenText, top: int | None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": out.text}
    finish = out.finish_reason
    if view.tools:
        calls = parse_tool_calls(out.text) if finish == "stop" else []
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            finish = "tool_calls"
    return {"index": view.index, "message": message, "logprobs": _chat_logprobs(out, 0, tokens, top),
            "finish_reason": finish}


def chat_deltas(out: RequestOutput, view: ChoiceView, tokens: TokenText, top: int | None) -> list[dict]:
    """The stream choices this output adds (role first; text as it comes; tool calls whole at the end)."""
    chunks = []
    if not view.started:
        view.started = True
        chunks.append(_chat_chunk_choice(view.index, {"role": "assistant", "content": ""}))
    if view.tools:
        if not out.finished:
            return chunks
        choice = chat_choice(out, view, tokens, top)
        logprobs = choice["logprobs"]
        if choice["finish_reason"] == "tool_calls":
            for k, call in enumerate(choice["message"]["tool_calls"]):
                head = {"index": k, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                chunks.append(_chat_chunk_choice(view.index, {"tool_calls": [head]}))
                args = {"index": k, "function": {"arguments": call["function"]["arguments"]}}
                chunks.append(_chat_chunk_choice(view.index, {"tool_calls": [args]}))
        elif out.text:
            chunks.append(_chat_chunk_choice(view.index, {"content": out.text}))
        chunks.append(_chat_chunk_choice(view.index, {}, choice["finish_reason"], logprobs))
        return chunks
    logprobs = _chat_logprobs(out, view.sent_logprobs, tokens, top)
    view.sent_logprobs = len(out.logprobs or ())
    if out.delta or (logprobs and logprobs["content"]):
        chunks.append(_chat_chunk_choice(view.index, {"content": out.delta}, None, logprobs))
    if out.finished:
        chunks.append(_chat_chunk_choice(view.index, {}, out.finish_reason))
    return chunks


def _chat_chunk_choice(index, delta, finish=None, logprobs=None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def _chat_logprobs(out: RequestOutput, start: int, tokens: TokenText, top: int | None) -> dict | None:
    if out.logprobs is None or top is None:
        return None

    def entry(token_id, logprob):
        text, raw = tokens(token_id)
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {"content": [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top[:top]]}
                        for lp in out.logprobs[start:]], "refusal": None}


# ---------------------------------------------------------------------- completions
def completion_choice(out: RequestOutput, view: ChoiceView, tokens: TokenText, k: int | None) -> dict:
    view.offset = len(view.prefix)
    return {"index": view.index, "text": view.prefix + out.text, "logprobs": _completion_logprobs(out, 0, view,
                                                                                                 tokens, k),
            "finish_reason": out.finish_reason}


def completion_delta(out: RequestOutput, view: ChoiceView, tokens: TokenText, k: int | None) -> dict | None:
    text = out.delta
    if not view.started:
        view.started = True
        text = view.prefix + text
        view.offset = len(view.prefix)
    logprobs = _completion_logprobs(out, view.sent_logprobs, view, tokens, k)
    view.sent_logprobs = len(out.logprobs or ())
    if not (text or out.finished or (logprobs and logprobs["tokens"])):
        return None
    return {"index": view.index, "text": text, "logprobs": logprobs, "finish_reason": out.finish_reason}


def _completion_logprobs(out, start, view: ChoiceView, tokens: TokenText, k: int | None) -> dict | None:
    if out.logprobs is None or k is None:
        return None
    body = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for lp in out.logprobs[start:]:
        text, _ = tokens(lp.token_id)
        body["tokens"].append(text)
        body["token_logprobs"].append(lp.logprob)
        body["top_logprobs"].append({tokens(t)[0]: v for t, v in lp.top[:k]})
        body["text_offset"].append(view.offset)
        view.offset += len(text)
    return body


def usage(prompt_tokens: int, outs: list[RequestOutput]) -> dict:
    completion = sum(o.completion_tokens for o in outs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}
