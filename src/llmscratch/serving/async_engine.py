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
sleeps until a request arrives. What the server reads of the engine (its
context length, a request's check, the queue and block counts) it reads
through this class, never from the engine itself.

A failure is never hidden. A request the engine fails on (a bug, or the
machine: out of memory) ends with `EngineError` in its client, and the
thread goes on with the others. If the thread itself ever ends, `alive`
turns false (the server's /health says so), every request still waiting
ends with `EngineError`, and `submit` refuses new ones at once: nothing
waits on a thread that is gone.
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
from llmscratch.generation.engine import Engine, StepFailed
from llmscratch.generation.sampling import SamplingConfig
from llmscratch.generation.sequence import Sequence, TokenLogprobs


class EngineError(Exception):
    """The engine could not finish a request: it failed on it, or it has stopped."""


@dataclass
class TokenEvent:
    token: int
    logprobs: TokenLogprobs | None


@dataclass
class EngineStats:
    """What /metrics shows of the engine at one moment."""

    running: int
    waiting: int
    blocks_used: int
    blocks_total: int
    draft_tokens: int = 0  # speculative decoding: draft tokens checked
    draft_tokens_accepted: int = 0  # and of those, kept


@dataclass(eq=False)  # each request is itself (and hashable), whatever it holds
class Request:
    """One generation a client waits for: what to generate, and where its events go."""

    prompt_ids: list[int]
    sampling: SamplingConfig
    stop_ids: Collection[int]
    loop: asyncio.AbstractEventLoop
    pending: asyncio.Queue = field(default_factory=asyncio.Queue)  # events not yet read
    seq: Sequence | None = None
    finish_reason: str | None = None
    produced: int = 0  # tokens the engine gave it so far (its stop token too): where the
    # next token's log-probabilities are in `seq.logprobs`

    async def events(self) -> AsyncIterator[TokenEvent]:
        """The request's tokens as the engine makes them; `finish_reason` is set at the end.
        Raises EngineError if the engine failed on it."""
        while True:
            kind, value = await self.pending.get()
            if kind == "error":
                self.finish_reason = "error"
                raise EngineError(value)
            if kind == "done":
                self.finish_reason = value
                return
            yield value


class AsyncEngine:
    """Runs an Engine in a thread of its own for asyncio clients (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine  # touched by the engine thread only (but its configuration)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._closing = threading.Lock()  # `submit` and the thread's end, one at a time
        self._closed = False
        self._requests: dict[int, Request] = {}  # sequence id -> its request
        self._unanswered: set[Request] = set()  # submitted, not yet ended: whatever happens,
        # each gets its end (done, or error) exactly once
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        self.failure: str | None = None  # why the thread ended, if it did not end on `stop`
        self.requests_total = 0
        self.tokens_total = 0
        self.errors_total = 0  # requests the engine failed on

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    # --- what the server may ask, from its own thread ----------------------------------

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs and takes requests."""
        return self._thread.is_alive() and not self._closed

    @property
    def why_not_alive(self) -> str:
        if self.failure:
            return f"the engine stopped ({self.failure}); restart the server"
        return "the engine is not running (the server is starting or shutting down)"

    @property
    def context_length(self) -> int:
        return self._engine.model.config.context_length

    @property
    def prefix_caching_off(self) -> str | None:
        """Why the engine shares no prompt prefixes (a model with Gated DeltaNet layers:
        generation/state_pool.py), or None when it does."""
        return self._engine.prefix_caching_off

    def check(self, prompt_ids: list[int], sampling: SamplingConfig) -> None:
        """`Engine.check`: fail in one line unless the request could run (it reads only the
        engine's configuration, so any thread may call it)."""
        self._engine.check(prompt_ids, sampling)

    def stats(self) -> EngineStats:
        """The queues and the cache's blocks (counts read while the thread runs: a moment's)."""
        scheduler, blocks = self._engine.scheduler, self._engine.blocks
        speculation = self._engine.speculation
        return EngineStats(len(scheduler.running), len(scheduler.waiting), blocks.used,
                           len(blocks.blocks), speculation.drafted, speculation.accepted)

    def submit(self, prompt_ids: list[int], sampling: SamplingConfig,
               stop_ids: Collection[int] = ()) -> Request:
        """Queue a generation (checked beforehand with `check`); await its events.
        Raises EngineError if the engine thread is not running."""
        request = Request(list(prompt_ids), sampling, stop_ids, asyncio.get_running_loop())
        with self._closing:  # so that the thread cannot end between the test and the put
            if not self.alive:
                raise EngineError(self.why_not_alive)
            self._unanswered.add(request)
            self._inbox.put(("add", request))
        self._wake.set()
        return request

    def abort(self, request: Request) -> None:
        """The client is gone: stop generating for it and free its blocks."""
        if request.finish_reason is None:
            self._inbox.put(("abort", request))
            self._wake.set()

    # --- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._read_inbox()
                if self._engine.scheduler.idle:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                self._step()
        except BaseException as err:  # a bug here: the thread ends, and says so everywhere
            self.failure = f"{type(err).__name__}: {err}"
            raise  # printed with its traceback by threading's excepthook
        finally:
            self._close()

    def _step(self) -> None:
        try:
            produced = self._engine.step()
        except StepFailed as failed:  # the engine ended the step's sequences; the rest go on
            self._report(failed.__cause__ or failed)
            for seq in failed.seqs:
                self._fail(self._requests.get(seq.id), failed.__cause__ or failed)
            return
        except Exception as err:  # outside a step's forward pass: end all the engine holds
            self._report(err)
            for request in list(self._requests.values()):
                self._engine.abort(request.seq, "error")
                self._fail(request, err)
            return
        # A speculating sequence may get several tokens from one step: it ends after its last.
        last = {seq.id: i for i, (seq, _) in enumerate(produced)}
        for i, (seq, token) in enumerate(produced):
            self._deliver(seq, token, ends=i == last[seq.id])

    def _read_inbox(self) -> None:
        while True:
            try:
                kind, request = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                self._add(request)
            elif request.seq is not None and not request.seq.finished:
                self._engine.abort(request.seq)
                self._finish(request, "abort")

    def _add(self, request: Request) -> None:
        try:  # checked by the client before it was sent: this is a last guard
            request.seq = self._engine.add(request.prompt_ids, request.sampling,
                                           request.stop_ids)
        except LLMScratchError as err:
            self._end(request, ("error", str(err)))
            return
        except Exception as err:  # a bug: this request fails, the engine goes on
            self._report(err)
            self._fail(request, err)
            return
        self._requests[request.seq.id] = request
        self.requests_total += 1

    def _deliver(self, seq: Sequence, token: int, ends: bool) -> None:
        """Hand a token to its request; `ends`: the sequence's last token of this step, after
        which a finished sequence's request ends."""
        request = self._requests.get(seq.id)
        if request is None:
            return
        index, request.produced = request.produced, request.produced + 1
        if token not in seq.stop_ids:
            self.tokens_total += 1
            logprobs = seq.logprobs[index] if seq.logprobs else None
            self._put(request, ("token", TokenEvent(token, logprobs)))
        if ends and seq.finished:
            self._finish(request, seq.finish_reason)

    def _finish(self, request: Request, reason: str) -> None:
        self._requests.pop(request.seq.id, None)
        self._end(request, ("done", reason))

    def _fail(self, request: Request | None, err: BaseException) -> None:
        """End a request the engine failed on; its client gets EngineError."""
        if request is None:
            return
        self.errors_total += 1
        if request.seq is not None:
            self._requests.pop(request.seq.id, None)
        self._end(request, ("error", f"the engine failed on this request "
                                     f"({type(err).__name__}); the server's log has more"))

    @staticmethod
    def _report(err: BaseException) -> None:
        """The traceback, for whoever runs the server (its clients get one line)."""
        traceback.print_exception(err)

    def _close(self) -> None:
        """The thread ends: refuse new requests, and end every one not yet answered (queued,
        running, or the one in hand when a bug struck)."""
        with self._closing:
            self._closed = True
        for request in list(self._unanswered):
            self._end(request, ("error", self.why_not_alive))
        self._requests.clear()

    def _end(self, request: Request, event: tuple) -> None:
        """A request's last event: ("done", finish reason) or ("error", message)."""
        if request in self._unanswered:
            self._unanswered.discard(request)
            self._put(request, event)

    @staticmethod
    def _put(request: Request, event: tuple) -> None:
        """Hand an event to the request's event loop (a server shutting down may have closed
        it: then nobody is listening)."""
        with contextlib.suppress(RuntimeError):
            request.loop.call_soon_threadsafe(request.pending.put_nowait, event)
