"""Providers turn chat messages into a completion.

`openai`: any OpenAI-compatible endpoint through the official `openai` client
(AsyncOpenAI). The client's own retries are off: we retry timeouts, 5xx, 429 and
refused connections ourselves with exponential backoff from the config, so tests
can make backoff tiny and every failure ends up recorded with its text.

`tunelab`: a model run in this process. Model code is imported lazily so an
eval that only uses HTTP providers never imports torch.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from tunelab.evals.config import ProviderConfig, RetryConfig


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    finish_reason: str | None = None


class ProviderError(Exception):
    """A call that failed after all retries; its text is recorded on the item."""


class Provider(Protocol):
    config: ProviderConfig

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion: ...

    async def aclose(self) -> None: ...


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

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        o = self._openai
        last: Exception | None = None
        for attempt in range(self.retry.max_retries + 1):
            if attempt:
                # Full jitter keeps many concurrent retries from hitting the server in lockstep.
                await asyncio.sleep(self.retry.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random() / 2))
            start = time.perf_counter()
            try:
                resp = await self.client.chat.completions.create(model=self.config.model, messages=messages, **params)
            except (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError) as exc:
                last = exc
                continue
            except o.APIStatusError as exc:
                if exc.status_code >= 500:
                    last = exc
                    continue
                raise ProviderError(f"{self.config.id}: HTTP {exc.status_code}: {_short(exc)}") from None
            latency = time.perf_counter() - start
            if not resp.choices:
                raise ProviderError(f"{self.config.id}: response had no choices")
            choice = resp.choices[0]
            usage = resp.usage
            return Completion(
                text=choice.message.content or "",
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                latency_s=latency, finish_reason=choice.finish_reason,
            )
        raise ProviderError(f"{self.config.id}: failed after {self.retry.max_retries + 1} attempts: "
                            f"{type(last).__name__}: {_short(last)}")

    async def aclose(self) -> None:
        await self.client.close()


class TunelabProvider:
    """In-process generation. Prefers `tunelab.engine.LLM` when the engine package
    exists; otherwise `tunelab.models.load_pretrained` + `generate`."""

    _PARAMS = {"max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
               "seed": "seed", "stop": "stop"}

    def __init__(self, cfg: ProviderConfig) -> None:
        self.config = cfg
        self._model: Any = None
        self._tokenizer: Any = None
        self._engine: Any = None
        # One model, one forward at a time; the event loop keeps scheduling HTTP work meanwhile.
        self._lock = threading.Lock()

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        return await asyncio.to_thread(self._complete, messages, params)

    async def aclose(self) -> None:
        self._model = self._engine = None

    def _complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        with self._lock:
            self._load()
            kwargs = {self._PARAMS[k]: v for k, v in params.items() if k in self._PARAMS}
            if isinstance(kwargs.get("stop"), str):
                kwargs["stop"] = [kwargs["stop"]]
            prompt = self._prompt_text(messages)
            start = time.perf_counter()
            try:
                from tunelab.models.generate import generate

                gen = generate(self._model, self._tokenizer, prompt, **kwargs)
            except Exception as exc:  # noqa: BLE001 - recorded on the item, the run goes on
                raise ProviderError(f"{self.config.id}: generation failed: {type(exc).__name__}: {exc}") from None
            return Completion(text=gen.text, prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                              latency_s=time.perf_counter() - start, finish_reason=gen.finish_reason)

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.config.adapter:
            raise ProviderError(f"{self.config.id}: `adapter:` needs the tunelab engine/LoRA packages, "
                                "which this install does not provide yet")
        try:
            from tunelab.models import load_pretrained
        except ImportError as exc:
            raise ProviderError(f"{self.config.id}: tunelab.models is not available: {exc}") from None
        self._model, self._tokenizer = load_pretrained(self.config.model)

    def _prompt_text(self, messages: list[dict[str, str]]) -> str:
        tok = self._tokenizer
        if len(messages) == 1 and messages[0]["role"] == "user":
            # A bare template: base models should see the text exactly as written.
            try_chat = getattr(tok, "chat_template", None)
            if not try_chat:
                return messages[0]["content"]
        try:
            return tok.apply_chat_template(messages, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - tokenizers without a chat template
            return "\n\n".join(m["content"] for m in messages)


def _short(exc: Exception | None, limit: int = 300) -> str:
    text = str(exc) if exc is not None else ""
    return text if len(text) <= limit else text[:limit] + "..."
