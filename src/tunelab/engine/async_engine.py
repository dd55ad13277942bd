"""The engine loop in a background thread, for servers: submit requests from asyncio, stream their outputs back.

The model runs in one thread that owns the engine; asyncio handlers only hand it new requests and aborts through
a lock-protected inbox and receive outputs through per-request asyncio queues. Tokenising a prompt and compiling
its grammar happen in a worker thread, so a huge prompt never stalls the event loop (or the other streams). A request
that fails on its own (see sampler.next_tokens) ends with an EngineFailure for that request alone; a step that fails
outside any request (a bug in the loop) fails the requests in flight instead of killing the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from tunelab.engine.errors import EngineError
from tunelab.engine.llm_engine import LLM
from tunelab.engine.sampling_params import SamplingParams
from tunelab.engine.sequence import RequestOutput


class QueueFull(EngineError):
    """The waiting queue already holds `max_queue` requests."""


class EngineFailure(RuntimeError):
    """A step failed (a bug, out of memory): the requests in flight end with this; the engine keeps serving."""


class AsyncLLM:
    def __init__(self, llm: LLM, max_queue: int | None = None):
        self.llm = llm
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._inbox: list = []
        self._aborts: list[str] = []
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="tunelab-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt: str | list[int], params: SamplingParams, adapter: str | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Outputs of one request as it progresses; the last one has `finish_reason` set. Leaving the iteration
        early (a client that went away) aborts the request and frees its blocks."""
        seq = await asyncio.to_thread(self.llm.make_sequence, prompt, params, adapter, request_id)
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self.max_queue is not None and self.num_waiting() >= self.max_queue:
                raise QueueFull(f"the waiting queue is full ({self.max_queue} requests); retry later")
            self._queues[seq.request_id] = (asyncio.get_running_loop(), queue)
            self._inbox.append(seq)
        self._wake.set()
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(seq.request_id)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)
        self._wake.set()

    def num_waiting(self) -> int:
        return len(self.llm.scheduler.waiting) + len(self._inbox)

    def num_running(self) -> int:
        return len(self.llm.scheduler.running)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stopped:
            with self._lock:
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, []
                for seq in inbox:
                    self.llm.add_sequence(seq)
                for request_id in aborts:
                    self.llm.abort(request_id)
                    self._queues.pop(request_id, None)
            if not self.llm.has_work():
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.llm.step()
            except Exception as exc:  # keep serving: fail the requests that were in flight
                self._fail_all(exc)
                continue
            for out in outputs:
                if out.error is not None:
                    failure = EngineFailure(f"the engine failed while running this request: {out.error}")
                    self._deliver(out.request_id, failure, True)
                else:
                    self._deliver(out.request_id, out, out.finished)

    def _deliver(self, request_id: str, item, last: bool) -> None:
        with self._lock:
            target = self._queues.pop(request_id, None) if last else self._queues.get(request_id)
        if target is not None:
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the caller's event loop is closed
                pass

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            ids = list(self._queues)
        error = EngineFailure(f"the engine failed while running this request: {type(exc).__name__}: {exc}")
        for request_id in ids:
            self.llm.abort(request_id)
            self._deliver(request_id, error, True)
