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


def test_a_failing_step_ends_its_requests_and_the_server_goes_on(server, monkeypatch):
    from llmscratch.generation.engine import Engine

    step = Engine.step
    calls = []

    def fails_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in a step")
        return step(self)

    monkeypatch.setattr(Engine, "step", fails_once)
    client = server.client()
    broken = client.completions.create(model="tiny", prompt="x", max_tokens=5, temperature=0)
    assert broken.choices[0].text == ""  # ended, not hung
    monkeypatch.undo()
    assert client.completions.create(model="tiny", prompt="x", max_tokens=3,
                                     temperature=0).usage.completion_tokens == 3
    assert server.metrics()["llmscratch_kv_blocks_used"] == 0
