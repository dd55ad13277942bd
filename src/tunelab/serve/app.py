"""The FastAPI app: OpenAI's /v1/models, /v1/completions (completions.py) and /v1/chat/completions (chat.py), plus
/health and /metrics, each concern its own APIRouter sharing one `ServeContext` (context.py).

The request's `model` field picks the LoRA adapter, as in vLLM: the base model's name runs the base model, an
adapter's name runs that adapter. A request is validated completely before it reaches the engine
(request_body.py); tokenising and template rendering run in worker threads; each choice of `n` is its own engine
request. Every failure is OpenAI's error body with the right status (400 invalid, 401 API key, 404 model or route,
405 method, 413 body too large, 415 encoding, 429 queue full, 500 a request that failed inside the engine), and a
client that leaves, streaming or not, aborts its requests and frees their KV blocks.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import Counter

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.engine import AsyncLLM
from tunelab.serve import chat, completions, metrics
from tunelab.serve.context import ServeContext, serve_context
from tunelab.serve.protocol import ApiError, error_body
from tunelab.serve.request_body import Limits


def create_app(engine: AsyncLLM, model_name: str, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    app = FastAPI(title="tunelab", version="1")
    ctx = ServeContext(engine, model_name, limits or Limits(), created=int(time.time()))
    app.state.serve = ctx
    app.add_middleware(_AuthAndCount, api_key=api_key, http_status=ctx.http_status)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.include_router(ops_router)
    app.include_router(completions.router)
    app.include_router(chat.router)
    return app


async def api_error(request: Request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status)


async def http_error(request: Request, exc: StarletteHTTPException):
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return JSONResponse(error_body(message.get(exc.status_code, str(exc.detail)), kind), status_code=exc.status_code)


async def invalid(request: Request, exc: RequestValidationError):
    return JSONResponse(error_body(f"invalid request: {exc.errors()[:1]}", "invalid_request_error"), 400)


# ---------------------------------------------------------------------- health, metrics, the model list
ops_router = APIRouter()


@ops_router.get("/health")
async def health():
    return {"status": "ok"}


@ops_router.get("/metrics")
async def prometheus(ctx: ServeContext = Depends(serve_context)):
    return PlainTextResponse(metrics.render(ctx.engine, ctx.http_status), media_type="text/plain; version=0.0.4")


@ops_router.get("/v1/models")
async def models(ctx: ServeContext = Depends(serve_context)):
    llm, created = ctx.llm, ctx.created
    cards = [{"id": ctx.model_name, "object": "model", "created": created, "owned_by": "tunelab",
              "root": llm.model_path, "parent": None, "max_model_len": llm.max_model_len}]
    cards += [{"id": name, "object": "model", "created": created, "owned_by": "tunelab", "root": path,
               "parent": ctx.model_name} for name, path in sorted(llm.adapters.items())]
    return {"object": "list", "data": cards}


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
