"""The FastAPI app: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, plus /health and /metrics.

The request's `model` field picks the LoRA adapter, as in vLLM: the base model's name runs the base model, an
adapter's name runs that adapter. A request is validated completely before it reaches the engine
(request_body.py); tokenising and template rendering run in worker threads; each choice of `n` is its own engine
request. Every failure is OpenAI's error body with the right status (400 invalid, 401 API key, 404 model or route,
405 method, 413 body too large, 415 encoding, 429 queue full, 500 a request that failed inside the engine), and a
client that leaves, streaming or not, aborts its requests and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.engine import AsyncLLM, EngineError, RequestOutput, SamplingParams
from tunelab.engine.sampling_params import MAX_LOGPROBS, SEED_MAX
from tunelab.serve import metrics
from tunelab.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, error_body
from tunelab.serve.request_body import Limits, check_limits, logit_bias, parse, read_json
from tunelab.serve.responses import (ChoiceView, TokenText, chat_choice, chat_deltas, completion_choice,
                                     completion_delta, usage)
from tunelab.serve.streams import finals, merged, sse, start_all
from tunelab.serve.tools import template_messages, template_renders_tools, tool_grammar

DEFAULT_MAX_TOKENS = 256


def create_app(engine: AsyncLLM, model_name: str, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    app = FastAPI(title="tunelab", version="1")
    limits = limits or Limits()
    http_status: Counter = Counter()
    created = int(time.time())
    llm = engine.llm
    tokens = TokenText(llm)
    renders_tools: list[bool] = []  # computed once, on the first request with tools

    app.add_middleware(_AuthAndCount, api_key=api_key, http_status=http_status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return JSONResponse(error_body(message.get(exc.status_code, str(exc.detail)), kind), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(f"invalid request: {exc.errors()[:1]}", "invalid_request_error"), 400)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(engine, http_status), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        cards = [{"id": model_name, "object": "model", "created": created, "owned_by": "tunelab", "root": llm.model_path,
                  "parent": None, "max_model_len": llm.max_model_len}]
        cards += [{"id": name, "object": "model", "created": created, "owned_by": "tunelab", "root": path,
                   "parent": model_name} for name, path in sorted(llm.adapters.items())]
        return {"object": "list", "data": cards}

    def adapter_for(model: str) -> str | None:
        if model in (model_name, llm.model_path):
            return None
        if model in llm.adapters:
            return model
        raise ApiError(404, f"The model `{model}` does not exist; this server has {[model_name, *sorted(llm.adapters)]}",
                       param="model", code="model_not_found")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await read_json(request, limits))
        check_limits(body, limits)
        adapter = adapter_for(body.model)
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs needs the prompt's logprobs, which tunelab does not compute; "
                           "drop one of them", param="echo")
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ApiError(400, "prompt: empty", param="prompt")
        params = _params(body, body.max_tokens, logprobs=body.logprobs)
        prefixes = [""] * len(prompts)
        if body.echo:
            prefixes = [p if isinstance(p, str) else await asyncio.to_thread(llm.tokenizer.decode, p) for p in prompts]
        jobs = [(p, _choice_params(params, j)) for p in prompts for j in range(body.n)]
        views = [ChoiceView(i, prefix=prefixes[i // body.n]) for i in range(len(jobs))]
        rid = f"cmpl-{uuid.uuid4().hex}"
        streams = await start_all(engine, jobs, adapter, rid)
        head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": body.model}
        if body.stream:
            async def chunks():
                last = {}
                async for i, out in merged(streams):
                    last[i] = out
                    choice = completion_delta(out, views[i], tokens, body.logprobs)
                    if choice is not None:
                        yield {**head, "choices": [choice]}
                if body.stream_options and body.stream_options.include_usage:
                    yield {**head, "choices": [], "usage": _usage(prompts, body.n, [last[i] for i in sorted(last)])}

            return sse(chunks())
        outs = await finals(streams, request)
        return {**head, "choices": [completion_choice(o, v, tokens, body.logprobs) for o, v in zip(outs, views)],
                "usage": _usage(prompts, body.n, outs)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse(ChatCompletionRequest, await read_json(request, limits))
        check_limits(body, limits)
        adapter = adapter_for(body.model)
        if body.max_tokens is not None and body.max_completion_tokens not in (None, body.max_tokens):
            raise ApiError(400, "max_tokens and max_completion_tokens disagree; send one", param="max_tokens")
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"top_logprobs: expected an integer in [0, {MAX_LOGPROBS}]", param="top_logprobs")
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        if tools and not renders_tools:
            renders_tools.append(await asyncio.to_thread(template_renders_tools, llm.tokenizer))
        if tools and not renders_tools[0]:
            raise ApiError(400, f"tools: the chat template of `{model_name}` does not render tools, so the model "
                           "would never see them; use a model whose template supports tool calling", param="tools")
        grammar = tool_grammar(body)
        schema = _response_schema(body)
        if grammar is not None and schema is not None:
            raise ApiError(400, "response_format: a JSON response format and tool calls cannot constrain the same "
                           "output; use tool_choice: none or response_format text", param="response_format")
        try:
            prompt = await asyncio.to_thread(_render, llm.tokenizer, template_messages(body), tools)
        except Exception as exc:  # noqa: BLE001 - a template's raise_exception, a missing template
            raise ApiError(400, f"messages: {exc}", param="messages") from None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = _params(body, max_tokens, logprobs=top, json_schema=schema, grammar=grammar)
        jobs = [(prompt, _choice_params(params, j)) for j in range(body.n)]
        views = [ChoiceView(i, tools=grammar is not None) for i in range(body.n)]
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        streams = await start_all(engine, jobs, adapter, rid)
        created_at = int(time.time())
        if body.stream:
            head = {"id": rid, "object": "chat.completion.chunk", "created": created_at, "model": body.model}

            async def chunks():
                last = {}
                async for i, out in merged(streams):
                    last[i] = out
                    for choice in chat_deltas(out, views[i], tokens, top):
                        yield {**head, "choices": [choice]}
                if body.stream_options and body.stream_options.include_usage:
                    yield {**head, "choices": [], "usage": _usage([prompt], body.n, [last[i] for i in sorted(last)])}

            return sse(chunks())
        outs = await finals(streams, request)
        return {"id": rid, "object": "chat.completion", "created": created_at, "model": body.model,
                "choices": [chat_choice(o, v, tokens, top) for o, v in zip(outs, views)],
                "usage": _usage([prompt], body.n, outs)}

    return app


# ---------------------------------------------------------------------- helpers
class _AuthAndCount:
    """ASGI middleware (not BaseHTTPMiddleware, which hides client disconnects from the routes): the API key on /v1,
    responses counted by status, and a last-resort 500 in OpenAI's shape."""

    def __init__(self, app, api_key: str | None, http_status: Counter):
        self.app, self.api_key, self.http_status = app, api_key, http_status

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.api_key is not None and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):  # constant time: no timing oracle
                body = error_body("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
                return await self._send_json(send, 401, body)
        started = False

        async def counting_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.http_status[message["status"]] += 1
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as exc:  # noqa: BLE001 - nothing a request does may take the server down
            if not started:
                await self._send_json(send, 500, error_body(f"internal error: {type(exc).__name__}: {exc}",
                                                            "server_error"))

    async def _send_json(self, send, status: int, body: dict) -> None:
        self.http_status[status] += 1
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


def _render(tokenizer, messages, tools) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tools=tools)
    # The template already holds the special tokens it wants (BOS...), as transformers does it.
    return tokenizer.encode(text, add_special_tokens=False)


def _response_schema(body: ChatCompletionRequest) -> dict | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    return fmt.json_schema.schema_


def _params(body, max_tokens, **extra) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, temperature=body.temperature,
            top_p=body.top_p, top_k=body.top_k, stop=body.stops, seed=body.seed,
            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
            ignore_eos=body.ignore_eos, logit_bias=logit_bias(body), **extra)
    except EngineError as exc:
        raise ApiError(400, str(exc), param=str(exc).split(":")[0]) from None


def _choice_params(params: SamplingParams, j: int) -> SamplingParams:
    """Choice j of n: its own seed (seed + j, wrapped into torch's range), so the choices differ but repeat."""
    if j == 0 or params.seed is None:
        return params
    seed = params.seed + j
    if seed > SEED_MAX:
        seed -= 1 << 64
    return SamplingParams(**{**params.to_dict(), "seed": seed})


def _usage(prompts, n: int, outs: list[RequestOutput]) -> dict:
    """Each prompt counted once however many choices it has."""
    return usage(sum(outs[i * n].prompt_tokens for i in range(len(prompts)) if i * n < len(outs)), outs)
