"""The OpenAI-compatible server, driven by the official `openai` client: every endpoint,
streaming, stop strings, every error, 32 clients at once, and a client that leaves."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model.presets import PRESETS
from llmscratch.runs.load import load_for_inference
from llmscratch.serving.app import serve_run
from llmscratch.tokenizer.chat import encode_chat

KEY = "test-key"


class Server:
    """`llmscratch serve` in a thread of this process, on a free port."""

    def __init__(self, run, **options) -> None:
        self.state, app = serve_run(str(run), device="cpu", model_name="tiny", **options)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = KEY, cls=openai.OpenAI):
        return cls(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def metrics(self) -> dict[str, float]:
        lines = httpx.get(f"{self.url}/metrics").text.splitlines()
        return {name: float(value) for name, value in (line.split() for line in lines)}

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.state.engine.stop()


@pytest.fixture(scope="module")
def server(tiny_run):
    server = Server(tiny_run, api_key=KEY)
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(tiny_run):
    """What the model writes, greedy, by the single-request loop (no engine, no server)."""
    model, tokenizer, settings = load_for_inference(tiny_run)

    def greedy(prompt_ids: list[int], n: int) -> str:
        ids = generate(model, prompt_ids, SamplingConfig(max_new_tokens=n, temperature=0),
                       settings.stop_token_ids, tokenizer.vocab_size)
        return tokenizer.decode(ids)

    return tokenizer, settings, greedy


def chat_ids(tokenizer, settings, messages):
    return encode_chat(tokenizer, messages, settings.chat_template)


def test_models_completion_and_chat_equal_the_single_request_loop(server, reference):
    tokenizer, settings, greedy = reference
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=8,
                                     temperature=0)
    assert done.choices[0].text == greedy(tokenizer.encode("ROMEO:"), 8)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 8
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                           temperature=0)
    assert reply.choices[0].message.content == greedy(chat_ids(tokenizer, settings, messages), 6)
    assert reply.usage.prompt_tokens == len(chat_ids(tokenizer, settings, messages))


def test_streaming_chat_gives_the_same_text_then_the_reason_and_the_usage(server):
    client = server.client()
    messages = [{"role": "user", "content": "Speak."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=7,
                                           temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=7, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7


def test_a_stop_string_ends_the_text_before_it(server, reference):
    tokenizer, _, greedy = reference
    full = greedy(tokenizer.encode("HAMLET:"), 12)
    stop = full[3:5]
    assert stop and full.find(stop) >= 0
    for stream in (False, True):
        result = server.client().completions.create(model="tiny", prompt="HAMLET:",
                                                    max_tokens=12, temperature=0, stop=[stop],
                                                    stream=stream)
        chunks = list(result) if stream else [result]
        assert "".join(c.choices[0].text for c in chunks) == full[:full.find(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices_with_a_seed_and_logprobs(server):
    client = server.client()
    ask = dict(model="tiny", messages=[{"role": "user", "content": "Go"}], max_tokens=6,
               temperature=1.0, n=2, seed=5, logprobs=True, top_logprobs=3)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]  # the seed decides
    assert texts[0] != texts[1]  # each choice its own draw
    for choice in first.choices:
        assert len(choice.logprobs.content) == 6
        assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in choice.logprobs.content)


@pytest.mark.parametrize("ask, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 200}]}, "messages"),
])
def test_bad_requests_are_400_naming_the_parameter(server, ask, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **ask}
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(**body)
    assert err.value.status_code == 400 and err.value.body["param"] == param


def test_key_model_size_and_json_errors(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="gpt-9", prompt="x", max_tokens=1)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    huge = httpx.post(f"{server.url}/v1/completions", headers=headers,
                      content=json.dumps({"prompt": "x" * (2 << 20)}))
    assert huge.status_code == 413 and "error" in huge.json()
    broken = httpx.post(f"{server.url}/v1/completions", headers=headers, content=b"{oops")
    assert broken.status_code == 422 and broken.json()["error"]["message"]
    # What Python's JSON reader cannot take is the client's mistake too, not the server's.
    for content, problem in ((b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
                              "an integer of 5,000 digits"),
                             (b"[" * 100_000, "nested 100,000 levels deep")):
        answer = httpx.post(f"{server.url}/v1/completions", headers=headers, content=content)
        assert answer.status_code == 422 and problem in answer.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_32_clients_at_once_each_get_what_they_get_alone(server):
    prompts = [f"Speaker {i}:" for i in range(32)]
    alone = {p: server.client().completions.create(model="tiny", prompt=p, max_tokens=10,
                                                   temperature=0).choices[0].text
             for p in prompts}

    async def stream_all() -> dict[str, str]:
        client = server.client(cls=openai.AsyncOpenAI)

        async def one(prompt: str) -> str:
            stream = await client.completions.create(model="tiny", prompt=prompt,
                                                     max_tokens=10, temperature=0, stream=True)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        texts = await asyncio.gather(*(one(p) for p in prompts))
        return dict(zip(prompts, texts, strict=True))

    assert asyncio.run(stream_all()) == alone


def test_a_client_that_leaves_mid_stream_frees_its_blocks(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=headers) as r:
        assert next(r.iter_lines()).startswith("data: ")  # it is generating; now leave
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = server.metrics()
        if (metrics["llmscratch_kv_blocks_used"], metrics["llmscratch_requests_running"]) == (0, 0):
            break
        time.sleep(0.05)
    assert metrics["llmscratch_kv_blocks_used"] == 0
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_speculating_server_writes_the_same_text_logprobs_and_stops(tiny_run, server):
    """`serve --speculative prompt-lookup`: a step may give a request several tokens; each
    reaches the client, with its own log-probabilities, and a stop string still cuts the
    text. Greedy, as the plain server writes it (this model repeats one token: most drafts
    are right); sampled, as the engine itself writes with the same seed. And `--speculative
    RUN_DIR`: a draft model's drafts."""
    from llmscratch.generation.engine import Engine

    fast = Server(tiny_run, draft_tokens=4)
    try:
        prompt = "ROMEO: ROMEO: ROMEO: ROMEO:"
        greedy = dict(model="tiny", prompt=prompt, max_tokens=30, temperature=0, logprobs=2)
        plain = server.client().completions.create(**greedy).choices[0]
        for stream in (False, True):
            result = fast.client().completions.create(**greedy, stream=stream)
            chunks = list(result) if stream else [result]
            assert "".join(c.choices[0].text for c in chunks) == plain.text
            assert chunks[-1].choices[0].finish_reason == "length"
            if not stream:
                assert chunks[0].choices[0].logprobs.token_logprobs == pytest.approx(
                    plain.logprobs.token_logprobs, abs=1e-5)
        model, tokenizer, settings = load_for_inference(tiny_run, "cpu")
        engine = Engine(model, vocab_size=tokenizer.vocab_size, draft_tokens=4)
        ids = engine.generate([tokenizer.encode(prompt)], SamplingConfig(30, 1.0, seed=7),
                              settings.stop_token_ids)[0]
        text = tokenizer.decode(ids)
        assert engine.speculation.drafted > 0
        sampled = dict(model="tiny", prompt=prompt, max_tokens=30, temperature=1.0, seed=7)
        assert fast.client().completions.create(**sampled).choices[0].text == text
        stop = next(text[i:i + 3] for i in range(5, len(text)) if text[i:i + 3].isalpha())
        cut = fast.client().completions.create(**sampled, stop=[stop]).choices[0]
        assert cut.text == text[:text.find(stop)] and cut.finish_reason == "stop"
        metrics = fast.metrics()
        assert metrics["llmscratch_draft_tokens_accepted_total"] > 0
        assert metrics["llmscratch_draft_tokens_total"] > 0
        assert metrics["llmscratch_kv_blocks_used"] == 0
    finally:
        fast.close()
    drafted = Server(tiny_run, draft_tokens=3, draft_run=str(tiny_run))  # always agrees
    try:
        assert drafted.client().completions.create(**greedy).choices[0].text == plain.text
        metrics = drafted.metrics()
        assert metrics["llmscratch_draft_tokens_accepted_total"] == \
            metrics["llmscratch_draft_tokens_total"] > 0
    finally:
        drafted.close()


def test_over_the_concurrency_limit_is_429(tiny_run, monkeypatch):
    from llmscratch.generation.engine import Engine

    step = Engine.step

    def slow_step(self):  # so that the first request is still running when the second comes
        time.sleep(0.2)
        return step(self)

    monkeypatch.setattr(Engine, "step", slow_step)
    server = Server(tiny_run, max_concurrency=1)
    server.state.stop_token_ids = []  # so that the first request cannot end early either
    try:
        body = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 40, "temperature": 0,
                "stream": True}
        client = server.client()
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as held:
            lines = held.iter_lines()  # kept: dropping the iterator would close the stream
            assert next(lines).startswith("data: ")
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model="tiny", prompt="x", max_tokens=1)
    finally:
        server.close()


def test_a_request_the_engine_fails_on_gets_an_error_and_the_others_go_on(server, monkeypatch):
    """A bug that strikes one request, where the engine adds it or in its step: that request
    is answered 500 (streaming: an error event), the one decoding beside it and every later
    one are served, /health stays true."""
    from llmscratch.generation import engine as engine_module

    add, sample_rows = engine_module.Engine.add, engine_module.sample_rows

    def add_fails(self, prompt_ids, sampling, stop_ids=()):
        if sampling.seed == 13:
            raise RuntimeError("a bug when a request is added")
        return add(self, prompt_ids, sampling, stop_ids)

    def sample_fails(logits, configs, *args):
        if any(cfg.seed == 14 for cfg in configs):
            raise RuntimeError("a bug in a step")
        return sample_rows(logits, configs, *args)

    monkeypatch.setattr(engine_module.Engine, "add", add_fails)
    monkeypatch.setattr(engine_module, "sample_rows", sample_fails)
    client = server.client()
    before = server.metrics()["llmscratch_request_errors_total"]
    expected = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30,
                                         temperature=0).choices[0].text
    healthy = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30,
                                        temperature=0, stream=True)
    text = next(healthy).choices[0].text  # it is decoding now
    with pytest.raises(openai.InternalServerError, match="engine failed on this request"):
        client.completions.create(model="tiny", prompt="x", max_tokens=5, seed=13)
    with pytest.raises(openai.APIError, match="engine failed on this request"):
        list(client.completions.create(model="tiny", prompt="x", max_tokens=5, seed=14,
                                       stream=True))
    text += "".join(chunk.choices[0].text for chunk in healthy if chunk.choices)
    assert text == expected
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert client.completions.create(model="tiny", prompt="x", max_tokens=3,
                                     temperature=0).usage.completion_tokens == 3
    metrics = server.metrics()
    assert metrics["llmscratch_request_errors_total"] == before + 2
    assert metrics["llmscratch_kv_blocks_used"] == 0
    assert server.state.active == 0  # every request gave its place back


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_engine_thread_that_ends_is_reported_and_nothing_waits_on_it(tiny_run, monkeypatch):
    from llmscratch.serving.async_engine import AsyncEngine

    def broken(self):
        raise RuntimeError("a bug in the engine thread's own loop")

    server = Server(tiny_run)
    try:
        monkeypatch.setattr(AsyncEngine, "_read_inbox", broken)  # read when a request comes
        client = server.client()
        with pytest.raises(openai.InternalServerError, match="the engine stopped"):
            client.completions.create(model="tiny", prompt="x", max_tokens=3)
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503
        assert "RuntimeError" in health.json()["error"]["message"]
        with pytest.raises(openai.APIStatusError, match="the engine stopped") as refused:
            client.chat.completions.create(model="tiny", max_tokens=3,
                                           messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 503
        assert server.metrics()["llmscratch_engine_up"] == 0
    finally:
        server.close()


BAD_FIELDS = [
    ({"seed": 1208925819614629174706176}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"frequency_penalty": float("nan")}, "frequency_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"n": True}, "n"),
    ({"stop": [1]}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, "include_usage"),
    ({"logit_bias": {"512": 1}}, "logit_bias"),  # the tokenizer has 512 ids
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"a": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"5": float("nan")}}, "logit_bias"),
    ({"logit_bias": [5]}, "logit_bias"),
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"model": 5}, "model"),
]
BAD_MESSAGES = [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": "hi"}, "messages"),
]


@pytest.mark.parametrize("path, base", [
    ("completions", {"prompt": "x"}),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
])
def test_every_sampling_field_out_of_range_is_a_400_naming_it(server, path, base):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for fields, param in BAD_FIELDS + (BAD_MESSAGES if path.startswith("chat") else []):
        body = json.dumps({"model": "tiny", **base, **fields})  # NaN as Python's json writes it
        answer = httpx.post(f"{server.url}/v1/{path}", headers=headers, content=body)
        assert answer.status_code == 400, (fields, answer.text)
        error = answer.json()["error"]
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), fields
    # and the server goes on: the largest seed there is, and a logit bias that works
    text = httpx.post(f"{server.url}/v1/completions", headers=headers, json={
        "prompt": "x", "max_tokens": 4, "seed": 2**63 - 1, "n": 2}).json()["choices"]
    assert len(text) == 2
    client = server.client()
    banned = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=1,
                                       temperature=0, logprobs=1)
    first = banned.choices[0].logprobs.tokens[0]
    first_id = server.state.tokenizer.encode(first, disallowed_special="none")
    again = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=1, temperature=0,
                                      logit_bias={str(first_id[0]): -100})
    assert len(first_id) == 1 and again.choices[0].text not in ("", first)
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_unknown_routes_and_methods_are_answered_in_openai_shape(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    for method, path, status in [("GET", "/v1/nothing", 404), ("GET", "/nothing", 404),
                                 ("GET", "/openapi.json", 404), ("GET", "/docs", 404),
                                 ("GET", "/v1/completions", 405), ("POST", "/health", 405)]:
        answer = httpx.request(method, f"{server.url}{path}", headers=headers)
        assert answer.status_code == status
        error = answer.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and path in error["message"]
    assert httpx.get(f"{server.url}/v1/completions", headers=headers).headers["allow"] == "POST"


def test_a_bug_in_a_handler_is_a_500_in_openai_shape(server, monkeypatch):
    from llmscratch.serving import app as app_module

    def broken(body, vocab_size):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(app_module, "parse_completion", broken)
    with pytest.raises(openai.InternalServerError, match="failed on this request") as err:
        server.client().completions.create(model="tiny", prompt="x", max_tokens=1)
    assert err.value.body["type"] == "server_error"
    monkeypatch.undo()
    assert server.client().completions.create(model="tiny", prompt="x", max_tokens=1)


def test_the_key_guards_every_api_route_and_only_those(server):
    """/v1/* needs the key; the chat page, /health and /metrics answer without it (they show
    no prompt, no text and no key: docs/inference.md, "What answers without the key")."""
    routes = server.server.config.app.openapi()["paths"]  # every route: {path: {method: ..}}
    api = {path: next(iter(methods)) for path, methods in routes.items()
           if path.startswith("/v1/")}
    assert len(api) == 3
    for path, method in api.items():
        for key in (None, "wrong", f"{KEY}x"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            answer = httpx.request(method, f"{server.url}{path}", headers=headers,
                                   json={"prompt": "x"})
            assert answer.status_code == 401, path
            assert answer.json()["error"]["code"] == "invalid_api_key"
    assert set(routes) - set(api) == {"/", "/health", "/metrics"}
    for path in set(routes) - set(api):
        assert httpx.get(f"{server.url}{path}").status_code == 200
    assert KEY not in httpx.get(f"{server.url}/").text


def test_serve_refuses_a_bad_port_in_one_line_before_loading_anything(tiny_run, capsys):
    import socket

    from llmscratch.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        for port, message in [("99999", "'99999' is not a port number"),
                              (str(taken.getsockname()[1]), "Address already in use")]:
            assert main(["serve", "--run", "/no/such/run", "--port", port]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    finally:
        taken.close()


def test_serve_prints_the_api_and_the_chat_page_addresses(tiny_run, capsys, monkeypatch):
    from llmscratch.cli import main

    ports = []  # instead of serving: the port of the socket it would serve on
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets: ports.append(sockets[0].getsockname()[1]))
    assert main(["serve", "--run", str(tiny_run), "--port", "0", "--device", "cpu"]) == 0
    port = ports[0]  # the free port it was given
    out = capsys.readouterr().out.splitlines()
    assert out == [f"serving tiny on http://127.0.0.1:{port}/v1 (OpenAI-compatible; Ctrl-C "
                   "stops)", f"chat page: http://127.0.0.1:{port}/"]


# --- every family: `serve` and `chat` on a tiny model of each preset ----------------------

TINY_PRESETS = sorted(name for name in PRESETS if name.endswith("-tiny"))


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_serve_and_chat_work_for_every_family(preset, tmp_path, monkeypatch, capsys):
    """A tiny model of each family (Gated DeltaNet hybrids included: their states live in
    the engine's state pool) answers a completion and a chat over the API with the tokens
    of the single-request loop, and `llmscratch chat` holds a conversation with it."""
    import io

    from fastapi.testclient import TestClient

    from llmscratch.cli import main
    from llmscratch.runs.checkpoint import save_weights
    from tests.conftest import new_run
    from tests.test_families import tiny

    run = new_run(tmp_path / "run", preset)
    save_weights(run, tiny(preset))
    model, tokenizer, settings = load_for_inference(run.path)
    greedy = SamplingConfig(max_new_tokens=6, temperature=0)
    messages = [{"role": "user", "content": "Who goes there?"}]

    def expected(ids: list[int]) -> str:
        return tokenizer.decode(generate(model, ids, greedy, settings.stop_token_ids,
                                         tokenizer.vocab_size))

    state, app = serve_run(str(run.path), device="cpu", model_name="tiny")
    try:
        client = TestClient(app)
        ask = {"model": "tiny", "max_tokens": 6, "temperature": 0}
        done = client.post("/v1/completions", json={**ask, "prompt": "ROMEO:"}).json()
        assert done["choices"][0]["text"] == expected(tokenizer.encode("ROMEO:"))
        said = client.post("/v1/chat/completions", json={**ask, "messages": messages}).json()
        assert said["choices"][0]["message"]["content"] == expected(
            chat_ids(tokenizer, settings, messages))
        hybrid = state.engine.prefix_caching_off is not None
        assert hybrid == (model.config.full_attention_interval > 0)
    finally:
        state.engine.stop()
    monkeypatch.setattr("sys.stdin", io.StringIO("Who goes there?\nAnd you?\n"))
    assert main(["chat", "--run", str(run.path), "--temperature", "0",
                 "--max-new-tokens", "6", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("model> ") == 2 and "error: " not in out
    assert ("note: prefix caching is off" in out) == hybrid  # and why, for a hybrid
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: None)  # started, not run
    assert main(["serve", "--run", str(run.path), "--port", "0", "--device", "cpu"]) == 0
    assert ("note: prefix caching is off" in capsys.readouterr().out) == hybrid
