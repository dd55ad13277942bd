"""The FastAPI app: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, plus /health and /metrics.

The request's `model` field picks the LoRA adapter, as in vLLM: the base model's name runs the base model, an
adapter's name runs that adapter. Every failure becomes OpenAI's error body with the right status (400 invalid
parameters, 401 API key, 404 model, 429 queue full, 500 anything else), so no request can take the server down.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from tunelab.engine import AsyncLLM, EngineError, EngineFailure, QueueFull, RequestOutput
from tunelab.models import ModelError
from tunelab.serve import metrics
from tunelab.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body

DEFAULT_MAX_TOKENS = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def create_app(engine: AsyncLLM, model_name: str, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="tunelab", version="1")
    http_status: Counter = Counter()
    created = int(time.time())
    llm = engine.llm

    @app.middleware("http")
    async def auth_and_count(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1"):
            if request.headers.get("authorization", "") != f"Bearer {api_key}":
                response = JSONResponse(error_body("Incorrect API key provided.", "invalid_request_error",
                                                   code="invalid_api_key"), status_code=401)
                http_status[401] += 1
                return response
        try:
            response = await call_next(request)
        except Exception as exc:  # nothing a request does may take the server down
            response = JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                                    status_code=500)
        http_status[response.status_code] += 1
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
            param = None
        else:
            loc = [str(p) for p in first.get("loc", ()) if p != "body"]
            param = ".".join(loc) or None
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

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

    def check_common(body) -> None:
        if body.n != 1:
            raise ApiError(400, "n: only n=1 is supported", param="n")
        if body.logprobs not in (None, False, 0):
            raise ApiError(400, "logprobs: not supported by tunelab", param="logprobs")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = adapter_for(body.model)
        check_common(body)
        params = _params(body, body.max_tokens)
        prompts = body.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise ApiError(400, "prompt: empty", param="prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            if len(prompts) != 1:
                raise ApiError(400, "prompt: streaming takes one prompt per request", param="prompt")
            stream = await _start(engine, prompts[0], params, adapter, rid)
            return _sse(_completion_chunks(stream, rid, body.model, body))
        outs = await asyncio.gather(*[_final(engine, p, params, adapter, f"{rid}-{i}") for i, p in enumerate(prompts)])
        choices = [{"index": i, "text": (p if body.echo and isinstance(p, str) else "") + o.text, "logprobs": None,
                    "finish_reason": o.finish_reason} for i, (p, o) in enumerate(zip(prompts, outs))]
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": body.model,
                "choices": choices, "usage": _usage(outs)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        adapter = adapter_for(body.model)
        check_common(body)
        try:
            text = llm.tokenizer.apply_chat_template([m.as_template_input() for m in body.messages])
        except Exception as exc:  # a template's raise_exception, a missing template
            raise ApiError(400, f"messages: {exc}", param="messages") from None
        # The template already holds the special tokens it wants (BOS...), as transformers does it.
        prompt = llm.tokenizer.encode(text, add_special_tokens=False)
        params = _params(body, body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            stream = await _start(engine, prompt, params, adapter, rid)
            return _sse(_chat_chunks(stream, rid, body.model, body))
        out = await _final(engine, prompt, params, adapter, rid)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage([out])}

    return app


# ---------------------------------------------------------------------- helpers
def _params(body, max_tokens):
    body.max_tokens = max_tokens
    try:
        return body.sampling_params(DEFAULT_MAX_TOKENS)
    except EngineError as exc:
        raise ApiError(400, str(exc), param=str(exc).split(":")[0]) from None


async def _start(engine: AsyncLLM, prompt, params, adapter, rid) -> AsyncIterator[RequestOutput]:
    """Start a request and wait for its first output, so a bad request fails with a status code, not mid-stream."""
    stream = engine.generate(prompt, params, adapter, rid)
    try:
        first = await stream.__anext__()
    except QueueFull as exc:
        raise ApiError(429, str(exc), "rate_limit_error", code="queue_full") from None
    except (EngineError, ModelError) as exc:
        raise ApiError(400, str(exc), param=str(exc).split(":")[0]) from None
    except EngineFailure as exc:
        raise ApiError(500, str(exc), "server_error") from None

    async def chained():
        try:
            yield first
            if not first.finished:
                async for out in stream:
                    yield out
        finally:
            await stream.aclose()  # a client that left aborts the request and frees its blocks

    return chained()


async def _final(engine: AsyncLLM, prompt, params, adapter, rid) -> RequestOutput:
    stream = await _start(engine, prompt, params, adapter, rid)
    last = None
    async for out in stream:
        last = out
    return last


def _usage(outs: list[RequestOutput]) -> dict:
    prompt = sum(o.prompt_tokens for o in outs)
    completion = sum(o.completion_tokens for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except Exception as exc:  # the status line is sent already: report the failure as an error event
            yield f"data: {json.dumps(error_body(str(exc), 'server_error'))}\n\n"
        else:
            yield "data: [DONE]\n\n"
        finally:
            await chunks.aclose()  # close the chain down to the engine now, not whenever it is collected

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _completion_chunks(stream, rid, model, body):
    created = int(time.time())
    last = None
    try:
        async for out in stream:
            last = out
            if out.delta or out.finished:
                yield {"id": rid, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": out.delta, "logprobs": None,
                                    "finish_reason": out.finish_reason}]}
    finally:
        await stream.aclose()
    if body.stream_options and body.stream_options.include_usage and last is not None:
        yield {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
               "usage": _usage([last])}


async def _chat_chunks(stream, rid, model, body):
    created = int(time.time())

    def chunk(delta, finish=None):
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    yield chunk({"role": "assistant", "content": ""})
    last = None
    try:
        async for out in stream:
            last = out
            if out.delta:
                yield chunk({"content": out.delta})
            if out.finished:
                yield chunk({}, out.finish_reason)
    finally:
        await stream.aclose()
    if body.stream_options and body.stream_options.include_usage and last is not None:
        yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
               "usage": _usage([last])}
