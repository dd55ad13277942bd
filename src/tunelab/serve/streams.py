"""From engine streams to HTTP responses: start every choice of a request, wait for them all (or for the client to
leave), merge them for streaming, and write server-sent events.

Each choice is one engine request. A request starts only once every choice has produced its first output, so a bad
request fails with a status code rather than mid-stream; after that, leaving early (a closed stream, a client that
disconnected, a failed sibling) closes the engine streams, which aborts those requests and frees their KV blocks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.engine import AsyncLLM, EngineError, EngineFailure, QueueFull, RequestOutput, UnknownAdapter
from tunelab.models import ModelError
from tunelab.serve.protocol import ApiError, error_body

DISCONNECT_POLL_S = 0.2


async def start_all(engine: AsyncLLM, jobs, adapter, rid) -> list[AsyncIterator[RequestOutput]]:
    """Start every choice and wait for each one's first output, so a bad request fails with a status code, not
    mid-stream; if one cannot start, the others are aborted."""
    results = await asyncio.gather(*[_start(engine, p, sp, adapter, f"{rid}-{i}") for i, (p, sp) in enumerate(jobs)],
                                   return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        for r in results:
            if not isinstance(r, BaseException):
                await r.aclose()
        raise failed[0]
    return results


async def _start(engine: AsyncLLM, prompt, params, adapter, rid) -> AsyncIterator[RequestOutput]:
    stream = engine.generate(prompt, params, adapter, rid)
    try:
        first = await stream.__anext__()
    except QueueFull as exc:
        raise ApiError(429, str(exc), "rate_limit_error", code="queue_full") from None
    except UnknownAdapter:
        raise  # the caller knows which model the request named (ServeContext.start)
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


async def finals(streams, request: Request) -> list[RequestOutput]:
    """Each stream's last output; if the client disconnects first, every request is aborted (blocks freed)."""
    async def last(stream):
        out = None
        try:
            async for out in stream:
                pass
        finally:
            await stream.aclose()
        return out

    tasks = [asyncio.ensure_future(last(s)) for s in streams]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, timeout=DISCONNECT_POLL_S, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise _as_api_error(task.exception())
            if pending and await request.is_disconnected():
                raise ApiError(499, "the client closed the request", code="client_closed_request")
        return [t.result() for t in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _as_api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, EngineFailure):
        return ApiError(500, str(exc), "server_error")
    return exc


async def merged(streams) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(choice index, output) from every stream as they come."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, stream):
        try:
            async for out in stream:
                await queue.put((i, out))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


def sse(chunks: AsyncIterator[dict]) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except Exception as exc:  # noqa: BLE001 - the status line is sent already: report it as an error event
            yield f"data: {json.dumps(error_body(str(exc), 'server_error'))}\n\n"
        else:
            yield "data: [DONE]\n\n"
        finally:
            await chunks.aclose()  # close the chain down to the engine now, not whenever it is collected

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
