"""The chat page at /, end to end in headless Chromium (Playwright): send, watch the reply
stream in, stop it, start a new chat, on a phone-sized screen, and model output that is
HTML shown as text, never run.

Chromium comes from Debian's package (`.ci/run` installs it; Playwright cannot download its
own browser here). Where there is none, these tests are skipped, saying so.
"""

import shutil
import time

import pytest

from tests.test_serving import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                                "(.ci/run installs Debian's chromium package)")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tiny_run):
    server = Server(tiny_run)
    yield server
    server.close()


def open_chat(browser, server, width=1000, height=700):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(server.url + "/")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "8")
    return page


def ask(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_done(page) -> None:
    page.wait_for_selector("#send:not([hidden])", timeout=20_000)


def test_a_message_gets_the_reply_the_api_gives(browser, server, tmp_path):
    page = open_chat(browser, server)
    ask(page, "Hello there")
    wait_done(page)
    shown = page.locator(".assistant").last.text_content()
    api = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8,
        temperature=0).choices[0].message.content
    assert shown == api and page.locator(".user").last.text_content() == "Hello there"
    page.screenshot(path=str(tmp_path / "chat.png"))
    page.close()


def test_new_chat_forgets_the_conversation(browser, server, monkeypatch):
    import llmscratch.serving.app as app

    seen = []
    encode = app.encode_chat

    def spy(tokenizer, messages, *args, **kwargs):
        seen.append([m["role"] for m in messages])
        return encode(tokenizer, messages, *args, **kwargs)

    monkeypatch.setattr(app, "encode_chat", spy)
    page = open_chat(browser, server)
    for text in ("one", "two"):
        ask(page, text)
        wait_done(page)
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    ask(page, "three")
    wait_done(page)
    assert seen == [["user"], ["user", "assistant", "user"], ["user"]]
    page.close()


def test_model_output_that_is_html_is_shown_as_text(browser, server, monkeypatch):
    from llmscratch.tokenizer.streaming import StopText

    attack = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>"
    real_push = StopText.push

    def malicious(self, token):
        real_push(self, token)
        return attack  # as if the model had written it

    monkeypatch.setattr(StopText, "push", malicious)
    page = open_chat(browser, server)
    ask(page, "say something")
    wait_done(page)
    assert attack in page.locator(".assistant").last.text_content()
    assert page.locator("#log img, #log script").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.close()


def test_stop_on_a_phone_sized_screen(browser, tiny_run, monkeypatch):
    from llmscratch.generation.engine import Engine

    step = Engine.step

    def slow_step(self):
        time.sleep(0.1)
        return step(self)

    monkeypatch.setattr(Engine, "step", slow_step)
    server = Server(tiny_run)
    server.state.stop_token_ids = []  # so the reply runs until it is stopped
    try:
        page = open_chat(browser, server, width=390, height=844)
        page.fill("#max-tokens", "50")
        ask(page, "Tell me everything")
        page.wait_for_function(
            "document.querySelector('.assistant') && "
            "document.querySelector('.assistant').textContent.length > 0", timeout=20_000)
        assert page.locator("#stop").is_visible() and page.locator("#prompt").is_visible()
        page.click("#stop")
        wait_done(page)
        written = page.locator(".assistant").last.text_content()
        time.sleep(0.5)
        assert page.locator(".assistant").last.text_content() == written  # it stopped
        deadline = time.monotonic() + 10
        while server.metrics()["llmscratch_kv_blocks_used"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.metrics()["llmscratch_kv_blocks_used"] == 0  # the request was aborted
        page.close()
    finally:
        server.close()
