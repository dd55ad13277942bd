"""Providers turn chat messages into a completion.

`openai`: any OpenAI-compatible endpoint through the official `openai` client
(AsyncOpenAI). The client's own retries are off: we retry timeouts, 5xx, 429 and
refused connections ourselves with exponential backoff from the config, so tests
can make backoff tiny and every failure ends up recorded with its text.

`tunelab`: a model run in this process by the engine's loop. Model code is imported
lazily so an eval that only uses HTTP providers never imports torch.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tunelab.evals.config import ProviderConfig, RetryConfig
from tunelab.models.chat import encode_chat


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    finish_reason: str | None = None
    # Per generated position, the most likely tokens as (token text, logprob), when the call asked for
    # `top_logprobs` and the provider returned them (G-Eval reads the score position's).
    logprobs: list[list[tuple[str, float]]] | None = None


class ProviderError(Exception):
    """A call that failed after all retries; its text is recorded on the item."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Provider(Protocol):
    config: ProviderConfig
    # Whether `complete` honours params["response_format"] (OpenAI's json_schema form). Judges
    # ask for structured output only then; the plain-text parse is the fallback.
    structured_output: bool

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion: ...

    async def aclose(self) -> None: ...


class StructuredOutputRefused(ProviderError):
    """The endpoint does not take `response_format`: the caller asks again in plain text."""


def make_provider(cfg: ProviderConfig, retry: RetryConfig) -> Provider:
    if cfg.type == "openai":
        return OpenAIProvider(cfg, retry)
    return TunelabProvider(cfg)


def cost(cfg: ProviderConfig, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    if cfg.price is None:
        return None
    return ((prompt_tokens or 0) * cfg.price.input_per_1m + (completion_tokens or 0) * cfg.price.output_per_1m) / 1e6


class OpenAIProvider:
    def __init__(self, cfg: ProviderConfig, retry: RetryConfig) -> None:
        import openai

        self.config = cfg
        self.retry = retry
        self._openai = openai
        api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        # Local servers ignore the key, but the client insists on one.
        self.client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=api_key or "not-needed",
                                         max_retries=0, timeout=retry.timeout_s)
        # OpenAI-compatible servers mostly accept response_format; one that refuses it (HTTP 400/422)
        # turns it off for the rest of the run (see complete).
        self.structured_output = cfg.structured_output is not False

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        if "json_schema" in params:  # the eval config's schema, as OpenAI's chat API takes it
            schema = {"name": "output", "schema": params["json_schema"], "strict": True}
            params = {**{k: v for k, v in params.items() if k != "json_schema"},
                      "response_format": {"type": "json_schema", "json_schema": schema}}
        if "response_format" in params and not self.structured_output:
            raise StructuredOutputRefused(f"{self.config.id}: structured output is off for this endpoint")
        try:
            return await self._complete(messages, params)
        except ProviderError as exc:
            if "response_format" in params and exc.status in (400, 422) and self.config.structured_output is None:
                self.structured_output = False
                raise StructuredOutputRefused(f"{self.config.id}: the endpoint refused response_format "
                                              f"({exc}); judging from plain text") from None
            raise

    async def _complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        o = self._openai
        last: Exception | None = None
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                # Full jitter keeps many concurrent retries from hitting the server in lockstep.
                await asyncio.sleep(self.retry.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            start = time.perf_counter()
            try:
                if self.config.chat is False:
                    resp = await self.client.completions.create(model=self.config.model,
                                                                prompt=completion_text(messages),
                                                                **_completions_params(params))
                else:
                    resp = await self.client.chat.completions.create(model=self.config.model, messages=messages,
                                                                     **params)
            except (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError) as exc:
                last = exc
                continue
            except o.APIStatusError as exc:
                if exc.status_code >= 500:
                    last = exc
                    continue
                raise ProviderError(f"{self.config.id}: HTTP {exc.status_code}: {_short(exc)}",
                                    status=exc.status_code) from None
            latency = time.perf_counter() - start
            if not resp.choices:
                raise ProviderError(f"{self.config.id}: response had no choices")
            choice = resp.choices[0]
            usage = resp.usage
            text = choice.text if self.config.chat is False else choice.message.content
            return Completion(
                text=text or "",
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                latency_s=latency, finish_reason=choice.finish_reason, logprobs=openai_logprobs(choice),
            )
        raise ProviderError(f"{self.config.id}: failed after {self.retry.max_retries + 1} attempts: "
                            f"{type(last).__name__}: {_short(last)}")

    async def aclose(self) -> None:
        await self.client.close()


class TunelabProvider:
    """In-process generation with `tunelab.engine` (paged KV cache, continuous batching, LoRA adapters via
    `adapter:`). Each request goes to the engine's loop (`AsyncLLM`) as it arrives and leaves when it finishes,
    so `concurrency:` is the number of requests in flight and `latency_s` is that request's own time from
    submission to its last token, as a client of a server would see it."""

    _PARAMS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "presence_penalty",
               "frequency_penalty", "json_schema")

    def __init__(self, cfg: ProviderConfig) -> None:
        self.config = cfg
        self._engine: Any = None
        self._load_error: ProviderError | None = None
        self._load_lock = asyncio.Lock()
        # The engine constrains decoding to a JSON schema (SamplingParams.json_schema), so judges on
        # this provider ask for structured output unless the config turns it off.
        self.structured_output = cfg.structured_output is not False

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        from tunelab.engine import SamplingParams

        engine = await self._loaded()
        adapter = "adapter" if self.config.adapter else None
        start = time.perf_counter()
        try:
            sampling = SamplingParams(**_engine_params(params, self._PARAMS))
            final = None
            async for final in engine.generate(self._prompt_ids(messages), sampling, adapter=adapter):
                pass
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the item; one bad prompt must not fail the rest
            raise ProviderError(f"{self.config.id}: generation failed: {type(exc).__name__}: {exc}") from None
        return Completion(final.text, final.prompt_tokens, final.completion_tokens, time.perf_counter() - start,
                          final.finish_reason, self._top_logprobs(final.logprobs))

    def _top_logprobs(self, logprobs: list[Any] | None) -> list[list[tuple[str, float]]] | None:
        """The engine's per-token alternatives (token id, logprob) as (token text, logprob)."""
        if logprobs is None:
            return None
        decode = self._tokenizer.decode
        return [[(decode([tid]), lp) for tid, lp in position.top] for position in logprobs]

    async def aclose(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    async def _loaded(self) -> Any:
        # Loading is not part of any request's latency: every request waits here, then starts its clock.
        async with self._load_lock:
            if self._load_error is not None:
                raise ProviderError(str(self._load_error))  # once is enough: the other items record the same reason at once
            if self._engine is None:
                from tunelab.engine import LLM, AsyncLLM

                adapters = {"adapter": self.config.adapter} if self.config.adapter else None
                try:
                    llm = await asyncio.to_thread(LLM, self.config.model, adapters=adapters, dtype=self.config.dtype,
                                                  **self.config.engine)
                except Exception as exc:  # noqa: BLE001 - every item records why
                    self._load_error = ProviderError(f"{self.config.id}: cannot load {self.config.model}: "
                                                     f"{type(exc).__name__}: {exc}")
                    raise self._load_error from None
                self._tokenizer = llm.tokenizer
                self._engine = AsyncLLM(llm)
        return self._engine

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self._tokenizer
        has_template = bool(getattr(tok, "chat_template", None))
        if self.config.chat is True and not has_template:
            raise ProviderError(f"{self.config.id}: chat: true, but {self.config.model} has no chat template")
        if has_template and self.config.chat is not False:
            return encode_chat(tok, messages)
        return tok.encode(completion_text(messages))


def _engine_params(params: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if k in allowed}
    fmt = params.get("response_format")
    if fmt is not None:   # OpenAI's {"type": "json_schema", "json_schema": {"schema": ...}} -> the schema itself
        out["json_schema"] = fmt.get("json_schema", {}).get("schema", {})
    if params.get("logprobs"):   # OpenAI's logprobs=True, top_logprobs=k -> the engine's logprobs=k
        out["logprobs"] = int(params.get("top_logprobs") or 0)
    return out


def _completions_params(params: dict[str, Any]) -> dict[str, Any]:
    """The completions endpoint takes `logprobs` as the number of alternatives, not a flag."""
    if not params.get("logprobs"):
        return params
    rest = {k: v for k, v in params.items() if k not in ("logprobs", "top_logprobs")}
    return {**rest, "logprobs": int(params.get("top_logprobs") or 0)}


def openai_logprobs(choice: Any) -> list[list[tuple[str, float]]] | None:
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return None
    if getattr(lp, "content", None):   # chat: one entry per position, each with its top_logprobs
        return [[(t.token, t.logprob) for t in pos.top_logprobs or []] for pos in lp.content]
    if getattr(lp, "top_logprobs", None):   # completions: one {token: logprob} per position
        return [sorted((d or {}).items(), key=lambda kv: -kv[1]) for d in lp.top_logprobs]
    return None


def completion_text(messages: list[dict[str, str]]) -> str:
    """Completion style: the model sees the rendered text exactly as written
    (several messages, e.g. few-shot turns, are joined by blank lines)."""
    return "\n\n".join(m["content"] for m in messages)


def _short(exc: Exception | None, limit: int = 300) -> str:
    text = str(exc) if exc is not None else ""
    return text if len(text) <= limit else text[:limit] + "..."
