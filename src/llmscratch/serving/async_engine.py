"""The engine behind a web server: one thread steps it, any number of clients await it.

The engine (generation/engine.py) is plain, single-threaded code. A server
handles many clients at once on an asyncio event loop. They meet here:

    client coroutines                         engine thread
    ----------------------------------------  -----------------------------------
    submit(request)  --- inbox (thread-safe) --> engine.add(...)
    async for event in request.events():       while requests run: engine.step()
        ...          <-- each request's queue --  a token, then its end
    (client gone)    --- inbox: abort -------->  engine.abort(...): blocks freed

Only the engine thread touches the engine, so the engine needs no locks; the
event loop is never blocked by a forward pass. When nothing runs, the thread
sleeps until a request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import traceback
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

from llmscratch.errors import LLMScratchError
from llmscratch.generation.engine import Engine
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.generation.sequence import Sequence, TokenLogprobs


@dataclass
class TokenEvent:
    token: int
    logprobs: TokenLogprobs | None


@dataclass
class Request:
    """One generation a client waits for: what to generate, and where its events go."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_ids: Collection[int]
    loop: asyncio.AbstractEventLoop
    pending: asyncio.Queue = field(default_factory=asyncio.Queue)  # events not yet read
    seq: Sequence | None = None
    finish_reason: str | None = None

    async def events(self) -> AsyncIterator[TokenEvent]:
        """The request's tokens as the engine makes them; `finish_reason` is set at the end."""
        while True:
            kind, value = await self.pending.get()
            if kind == "done":
                self.finish_reason = value
                return
            yield value


class AsyncEngine:
    """Runs an Engine in a thread of its own for asyncio clients (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._requests: dict[int, Request] = {}  # sequence id -> its request
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.requests_total = 0
        self.tokens_total = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    def submit(self, prompt_ids: list[int], sampling: SamplingConfig,
               stop_ids: Collection[int] = ()) -> Request:
        """Queue a generation (checked beforehand with `engine.check`); await its events."""
        request = Request(list(prompt_ids), sampling, stop_ids, asyncio.get_running_loop())
        self._send(("add", request))
        return request

    def abort(self, request: Request) -> None:
        """The client is gone: stop generating for it and free its blocks."""
        if request.finish_reason is None:
            self._send(("abort", request))

    def _send(self, message: tuple) -> None:
        self._inbox.put(message)
        self._wake.set()

    # --- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._read_inbox()
            if self.engine.scheduler.idle:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                produced = self.engine.step()
            except Exception:  # a bug: say so, end every request, keep serving
                traceback.print_exc()
                self._fail_all()
                continue
            for seq, token in produced:
                self._deliver(seq, token)

    def _fail_all(self) -> None:
        for request in list(self._requests.values()):
            self.engine.abort(request.seq)
            self._finish(request, "error")

    def _read_inbox(self) -> None:
        while True:
            try:
                kind, request = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                try:  # checked by the client before it was sent: this is a last guard
                    request.seq = self.engine.add(request.prompt_ids, request.sampling,
                                                  request.stop_ids)
                except LLMScratchError:
                    self._put(request, ("done", "error"))
                    continue
                self._requests[request.seq.id] = request
                self.requests_total += 1
            elif request.seq is not None and not request.seq.finished:
                self.engine.abort(request.seq)
                self._finish(request, "abort")

    def _deliver(self, seq: Sequence, token: int) -> None:
        request = self._requests.get(seq.id)
        if request is None:
            return
        if token not in seq.stop_ids:
            self.tokens_total += 1
            logprobs = seq.logprobs[-1] if seq.logprobs else None
            self._put(request, ("token", TokenEvent(token, logprobs)))
        if seq.finished:
            self._finish(request, seq.finish_reason)

    def _finish(self, request: Request, reason: str) -> None:
        self._requests.pop(request.seq.id, None)
        self._put(request, ("done", reason))

    @staticmethod
    def _put(request: Request, event: tuple) -> None:
        """Hand an event to the request's event loop (a server shutting down may have closed
        it: then nobody is listening)."""
        with contextlib.suppress(RuntimeError):
            request.loop.call_soon_threadsafe(request.pending.put_nowait, event)
