"""An OpenAI-compatible HTTP server for a run's model (FastAPI), on the engine.

    GET  /v1/models             the one model served
    POST /v1/completions        text in, text out
    POST /v1/chat/completions   messages in (rendered with the run's chat template)
    GET  /health                {"status": "ok"}, or 503 once the engine has stopped
    GET  /metrics               Prometheus text: requests, tokens, errors, queue, KV blocks
    GET  /                      a chat page (static/index.html) that uses the API above

Both generation endpoints stream with `"stream": true`: server-sent events,
one `data: {json}` a chunk, then `data: [DONE]`. Each request's tokens come
from the engine thread (async_engine.py) and become text through `StopText`
(tokenizer/streaming.py): whole characters only, cut at the request's stop
strings. A client that goes away, streaming or not, has its request aborted
and its KV-cache blocks freed at once.

An API key (`api_key`) guards every route under /v1, the router's
dependency: a route added there is guarded too. /, /health and /metrics
answer without it: the page holds no data (it sends the key the user types
to /v1), /health only the engine's state, /metrics only counts.

Every error is answered in OpenAI's shape (protocol.py), never with a
traceback: a wrong request, an unknown route (404) or method (405), a
request the engine failed on (500; while streaming, an `error` event), the
engine stopped (503), a bug in a handler (500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from llmscratch.distributed import resolve_device
from llmscratch.errors import LLMScratchError
from llmscratch.generation.cpu_weights import pack_linear_weights
from llmscratch.generation.engine import Engine
from llmscratch.generation.quantize import quantize_linear_weights
from llmscratch.io import parse_json
from llmscratch.runs.load import load_draft, load_for_inference
from llmscratch.serving.async_engine import AsyncEngine, EngineError
from llmscratch.serving.protocol import APIError, Params, parse_chat, parse_completion
from llmscratch.tokenizer import StopText, Tokenizer
from llmscratch.tokenizer.chat import encode_chat

MAX_BODY_BYTES = 1 << 20
CHAT_PAGE = Path(__file__).parent / "static" / "index.html"


@dataclass
class ServerState:
    """What every request handler needs: the engine, the tokenizer, the served model's name."""

    engine: AsyncEngine
    tokenizer: Tokenizer
    model_name: str
    stop_token_ids: list[int]
    chat_template: str | None = None
    special_tokens: dict | None = None
    api_key: str | None = None
    max_concurrency: int = 64
    active: int = 0


@dataclass
class Choice:
    """One of a request's n answers, as it is written."""

    index: int
    text: StopText
    request: object  # async_engine.Request
    tokens: int = 0
    finish_reason: str | None = None


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="llmscratch", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llm = state
    _answer_errors_in_openai_shape(app)

    @app.get("/health")
    async def health() -> dict:
        if not state.engine.alive:
            raise APIError(503, state.engine.why_not_alive, kind="server_error",
                           code="engine_stopped")
        return {"status": "ok"}

    @app.get("/")
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(_metrics(state))

    async def authorize(request: Request) -> None:
        _authorize(request, state)

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @api.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": state.model_name, "object": "model",
                                            "created": 0, "owned_by": "llmscratch"}]}

    @api.post("/completions")
    async def completions(request: Request) -> Response:
        body = await _body(request, state)
        prompt, params = parse_completion(body, state.tokenizer.vocab_size)
        prompt_ids = state.tokenizer.encode(prompt, disallowed_special="none")
        return await _generate(request, state, "text_completion", prompt_ids, params)

    @api.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _body(request, state)
        messages, params = parse_chat(body, state.tokenizer.vocab_size)
        try:
            prompt_ids = encode_chat(state.tokenizer, messages, state.chat_template,
                                     **(state.special_tokens or {}))
        except LLMScratchError as err:
            raise APIError(400, str(err), "messages") from None
        return await _generate(request, state, "chat.completion", prompt_ids, params)

    app.include_router(api)
    return app


def _answer_errors_in_openai_shape(app: FastAPI) -> None:
    """Every error the server answers, ours or the framework's, as {"error": {...}}."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(HTTPException)  # no such route (404), or not with this method (405)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        message = {404: f"there is no {where} on this server (the API: GET /v1/models, "
                        "POST /v1/completions, POST /v1/chat/completions)",
                   405: f"{where} is not allowed; {request.url.path} takes "
                        f"{(err.headers or {}).get('Allow', 'another method')}"}
        answer = APIError(err.status_code, message.get(err.status_code, str(err.detail)),
                          code={404: "not_found", 405: "method_not_allowed"}.get(
                              err.status_code))
        return JSONResponse(answer.body(), status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)  # a bug: the client gets one line; Starlette raises it
    async def bug(request: Request, err: Exception) -> JSONResponse:  # again, for the log
        return JSONResponse(APIError(500, f"the server failed on this request "
                                     f"({type(err).__name__}); its log has more",
                                     kind="server_error").body(), status_code=500)


# --- checks every generation request goes through ---------------------------------------


def _authorize(request: Request, state: ServerState) -> None:
    """Every /v1 route's first check (the router's dependency), when the server has a key."""
    if not state.api_key:
        return
    sent = request.headers.get("authorization", "").encode()
    if not secrets.compare_digest(sent, f"Bearer {state.api_key}".encode()):  # constant time
        raise APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                       kind="authentication_error", code="invalid_api_key")


async def _body(request: Request, state: ServerState) -> dict:
    """The request's JSON object, after its size and its model are checked."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:  # the project's one JSON reader: nesting too deep, an integer too long, ...
        body = parse_json(raw.decode("utf-8"), "the request body")
    except UnicodeDecodeError as err:
        raise APIError(422, f"the request body is not UTF-8 (bad byte at offset "
                            f"{err.start})") from None
    except LLMScratchError as err:
        raise APIError(422, str(err)) from None
    if not isinstance(body, dict):
        raise APIError(422, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"model must be a string, got {model!r}", "model")
    if model is not None and model != state.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server has "
                       f"{state.model_name!r}", "model", code="model_not_found")
    return body


# --- generation ---------------------------------------------------------------------------


async def _generate(request: Request, state: ServerState, kind: str, prompt_ids: list[int],
                    params: Params) -> Response:
    """Queue the request's n choices; answer in one body, or as a stream of chunks."""
    engine = state.engine
    context = engine.context_length
    max_new = min(params.max_tokens or context, max(context - len(prompt_ids), 1))
    samplings = [params.sampling_for(i, max_new) for i in range(params.n)]
    try:
        engine.check(prompt_ids, samplings[0])
    except LLMScratchError as err:
        raise APIError(400, str(err), "messages" if kind == "chat.completion" else "prompt"
                       ) from None
    if state.active >= state.max_concurrency:
        raise APIError(429, f"the server is busy ({state.max_concurrency} requests at once); "
                       "try again shortly", kind="rate_limit_error")
    choices: list[Choice] = []
    try:
        for i, sampling in enumerate(samplings):
            request_i = engine.submit(prompt_ids, sampling, state.stop_token_ids)
            choices.append(Choice(i, StopText(state.tokenizer, params.stop), request_i))
    except EngineError as err:  # the engine thread is gone: say so now, never wait for it
        for choice in choices:
            engine.abort(choice.request)
        raise APIError(503, str(err), kind="server_error", code="engine_stopped") from None
    state.active += 1
    answer = _Answer(state, kind, prompt_ids, params, choices)
    if params.stream:  # closed at the end of the stream, or after it if it never started
        return StreamingResponse(answer.stream(), media_type="text/event-stream",
                                 background=BackgroundTask(answer.close))
    return JSONResponse(await answer.whole(request))


class _Answer:
    """The text of a request's choices, as one response or a stream of chunks."""

    def __init__(self, state: ServerState, kind: str, prompt_ids: list[int], params: Params,
                 choices: list[Choice]) -> None:
        self.state, self.kind, self.params, self.choices = state, kind, params, choices
        self.prompt_tokens = len(prompt_ids)
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.logprobs = {c.index: [] for c in choices}
        self.closed = False

    async def pieces(self) -> AsyncIterator[tuple[Choice, str]]:
        """(choice, new text) as the engine writes them, the choices interleaved; a choice's
        end comes as (choice, "") with its finish_reason set. Aborts whatever is left over."""
        merged: asyncio.Queue = asyncio.Queue()
        failures: list[str] = []

        async def follow(choice: Choice) -> None:
            try:
                async for event in choice.request.events():
                    choice.tokens += 1
                    if event.logprobs is not None:
                        self.logprobs[choice.index].append(event.logprobs)
                    text = choice.text.push(event.token)
                    if choice.text.stopped:  # a stop string: this choice is done
                        self.state.engine.abort(choice.request)
                        choice.finish_reason = "stop"
                        merged.put_nowait((choice, text))
                        break
                    if text:
                        merged.put_nowait((choice, text))
                if choice.finish_reason is None:
                    choice.finish_reason = ("length" if choice.request.finish_reason == "length"
                                            else "stop")
                    merged.put_nowait((choice, choice.text.flush()))
            except EngineError as err:
                failures.append(str(err))
            finally:
                merged.put_nowait((choice, None))  # always: the reader counts the ends

        tasks = [asyncio.create_task(follow(c)) for c in self.choices]
        try:
            done = 0
            while done < len(self.choices):
                choice, text = await merged.get()
                if failures:  # the engine failed on one of the choices: the request fails
                    raise EngineError(failures[0])
                if text is None:
                    done += 1
                    yield choice, ""
                elif text:
                    yield choice, text
        finally:
            for task in tasks:
                task.cancel()
            self.close()

    def close(self) -> None:
        """Abort what still runs and give back the request's place; once, however it ends."""
        if self.closed:
            return
        self.closed = True
        for choice in self.choices:
            self.state.engine.abort(choice.request)
        self.state.active -= 1

    async def whole(self, request: Request) -> dict:
        """The complete response; the client leaving aborts it."""
        texts = {c.index: "" for c in self.choices}

        async def collect() -> None:
            async for choice, text in self.pieces():
                texts[choice.index] += text

        task = asyncio.create_task(collect())
        while not task.done():
            await asyncio.wait({task}, timeout=0.1)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return {}
        try:
            await task
        except EngineError as err:
            raise APIError(500, str(err), kind="server_error", code="engine_error") from None
        choices = [self._choice(c, texts[c.index], final=True) for c in self.choices]
        return {"id": self.id, "object": self.kind, "created": self.created,
                "model": self.state.model_name, "choices": choices, "usage": self._usage()}

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events; if the client goes away, the server cancels this and
        `pieces` aborts the requests."""
        if self.kind == "chat.completion":
            for c in self.choices:  # the role comes first, as OpenAI sends it
                yield self._event([{"index": c.index, "finish_reason": None,
                                    "delta": {"role": "assistant", "content": ""}}])
        try:
            async for choice, text in self.pieces():
                finished = choice.finish_reason if not text else None
                yield self._event([self._choice(choice, text, final=finished is not None,
                                                 delta=True)])
        except EngineError as err:  # the status line has gone: the error is an event
            error = APIError(500, str(err), kind="server_error", code="engine_error")
            yield f"data: {json.dumps(error.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        if self.params.include_usage:
            yield self._event([], usage=self._usage())
        yield "data: [DONE]\n\n"

    def _choice(self, choice: Choice, text: str, final: bool, delta: bool = False) -> dict:
        entry = {"index": choice.index, "finish_reason": choice.finish_reason if final else None}
        if self.kind == "chat.completion":
            entry["delta" if delta else "message"] = (
                {"content": text} if delta else {"role": "assistant", "content": text})
        else:
            entry["text"] = text
        entry["logprobs"] = self._logprobs(choice) if final and not delta else None
        return entry

    def _logprobs(self, choice: Choice) -> dict | None:
        if self.params.logprobs is None:
            return None
        decode = self.state.tokenizer.decode
        entries = self.logprobs[choice.index]
        if self.kind == "chat.completion":
            return {"content": [{
                "token": decode([e.token]), "logprob": e.logprob,
                "bytes": list(self.state.tokenizer.token_bytes(e.token)),
                "top_logprobs": [{"token": decode([t]), "logprob": lp,
                                  "bytes": list(self.state.tokenizer.token_bytes(t))}
                                 for t, lp in e.top]} for e in entries]}
        return {"tokens": [decode([e.token]) for e in entries],
                "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{decode([t]): lp for t, lp in e.top} for e in entries]}

    def _event(self, choices: list[dict], usage: dict | None = None) -> str:
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else self.kind
        chunk = {"id": self.id, "object": kind, "created": self.created,
                 "model": self.state.model_name, "choices": choices}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    def _usage(self) -> dict:
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def _metrics(state: ServerState) -> str:
    engine, stats = state.engine, state.engine.stats()
    lines = {
        "llmscratch_engine_up": int(engine.alive),
        "llmscratch_requests_total": engine.requests_total,
        "llmscratch_request_errors_total": engine.errors_total,
        "llmscratch_generated_tokens_total": engine.tokens_total,
        "llmscratch_requests_running": stats.running,
        "llmscratch_requests_waiting": stats.waiting,
        "llmscratch_kv_blocks_used": stats.blocks_used,
        "llmscratch_kv_blocks_total": stats.blocks_total,
        "llmscratch_draft_tokens_total": stats.draft_tokens,
        "llmscratch_draft_tokens_accepted_total": stats.draft_tokens_accepted,
    }
    return "".join(f"{name} {value}\n" for name, value in lines.items())


def serve_run(run_dir: str, device: str = "auto", dtype: str | None = None,
              model_name: str | None = None, api_key: str | None = None,
              max_concurrency: int = 64, max_batch: int = 32, quantize: str | None = None,
              draft_tokens: int = 0, draft_run: str | None = None
              ) -> tuple[ServerState, FastAPI]:
    """A run's model (its linear layers quantized to `quantize`: int8, int4 or None), its
    engine started in its thread, and the app that serves them. draft_tokens > 0: every
    request speculates with up to that many draft tokens a step, drafted by the model of
    `draft_run` (a run with the same tokenizer) or else by prompt lookup."""
    if max_concurrency < 1 or max_batch < 1:
        raise LLMScratchError("--max-concurrency and --max-batch must be at least 1")
    model, tokenizer, settings = load_for_inference(run_dir, resolve_device(device), dtype)
    quantize_linear_weights(model, quantize)
    pack_linear_weights(model)  # on the CPU: oneDNN's kernels where faster (inference only)
    draft = load_draft(draft_run, tokenizer, model.tok_emb.weight.device, dtype) \
        if draft_run else None
    if draft is not None:
        pack_linear_weights(draft)
    engine = AsyncEngine(Engine(model, max_batch=max_batch, vocab_size=tokenizer.vocab_size,
                                draft_tokens=draft_tokens, draft_model=draft))
    state = ServerState(engine, tokenizer, model_name or Path(run_dir).resolve().name,
                        list(settings.stop_token_ids), settings.chat_template,
                        {"bos_token": settings.bos_token, "eos_token": settings.eos_token},
                        api_key, max_concurrency)
    engine.start()
    return state, create_app(state)
