"""Chat templates render as `transformers` renders them: Llama 3 and ChatML (Qwen) style
templates against `apply_chat_template`, and our own template, by hand."""

import pytest
import transformers

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer.chat import DEFAULT_TEMPLATE, render_chat
from llmscratch.tokenizer.hf_json import save_hf_tokenizer
from tests.hf_tiny import tokenizer

# Llama 3 Instruct's template, as its tokenizer_config.json holds it.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Qwen2's ChatML template, with its default system prompt.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer in verse."},
     {"role": "user", "content": "  The sea?  "},
     {"role": "assistant", "content": "It <b>waits</b> & \"sighs\"."},
     {"role": "user", "content": "Ünïcode, 漢字"}],
]


@pytest.mark.parametrize("family, template, specials", [
    ("llama", LLAMA3, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}),
    ("qwen3", CHATML, {"eos_token": "<|im_end|>"}),
])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["one turn", "four turns"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_an_imported_template_renders_as_transformers_renders_it(
        family, template, specials, conversation, add_generation_prompt, tmp_path):
    save_hf_tokenizer(tokenizer(family).parts, tmp_path)
    theirs = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), chat_template=template, **specials)
    expected = theirs.apply_chat_template(conversation, tokenize=False,
                                          add_generation_prompt=add_generation_prompt)
    assert render_chat(conversation, template, add_generation_prompt, **specials) == expected


def test_our_template_by_hand():
    rendered = render_chat(CONVERSATIONS[1][:2])
    assert rendered == ("<|system|>\nAnswer in verse.<|endoftext|>\n"
                        "<|user|>\n  The sea?  <|endoftext|>\n<|assistant|>\n")
    assert render_chat(CONVERSATIONS[0], DEFAULT_TEMPLATE, add_generation_prompt=False) == (
        "<|user|>\nWhat is 2 + 2?<|endoftext|>\n")


@pytest.mark.parametrize("messages, message", [
    ([], "the conversation is empty"),
    ([{"role": "robot", "content": "beep"}], "role 'robot'"),
    ([{"role": "user"}], "must have a 'role' and a text 'content'"),
    (["hello"], "must have a 'role' and a text 'content'"),
])
def test_messages_that_are_not_a_conversation_are_refused(messages, message):
    with pytest.raises(LLMScratchError, match=message):
        render_chat(messages)


def test_a_template_is_sandboxed_and_its_errors_are_one_line():
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(LLMScratchError, match="the chat template failed"):
        render_chat(CONVERSATIONS[0], escape)
    refusing = "{{ raise_exception('only user and assistant roles are supported') }}"
    with pytest.raises(LLMScratchError, match="only user and assistant roles"):
        render_chat(CONVERSATIONS[0], refusing)
    with pytest.raises(LLMScratchError, match="the chat template failed"):
        render_chat(CONVERSATIONS[0], "{% for %}")


def chat(monkeypatch, capsys, run, lines: list[str], *options: str) -> str:
    """`llmscratch chat` with `lines` typed in; returns what it printed."""
    import io

    from llmscratch.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", "--run", str(run), "--temperature", "0", "--max-new-tokens", "4",
                 *options]) == 0
    return capsys.readouterr().out


def test_the_chat_command_keeps_the_conversation_and_obeys_its_commands(
        tiny_run, monkeypatch, capsys):
    import llmscratch.tokenizer.chat as chat_module

    rendered = []
    encode = chat_module.encode_chat

    def spy(tokenizer, messages, *args, **kwargs):
        rendered.append([m["role"] for m in messages])
        return encode(tokenizer, messages, *args, **kwargs)

    monkeypatch.setattr(chat_module, "encode_chat", spy)
    out = chat(monkeypatch, capsys, tiny_run,
               ["hi", "ok", "/system Be brief.", "yo", "/reset", "go", "/nope"])
    assert rendered == [
        ["user"],
        ["user", "assistant", "user"],  # the first turn is kept
        ["system", "user"],  # /system: does it leave room for a reply?
        ["system", "user"],  # a new system message starts the conversation over
        ["system", "user"],  # /reset forgets the turns, keeps the system message
    ]
    assert out.count("model> ") == 4 and "unknown command /nope" in out
    # A message longer than the context on its own is one line, and the chat goes on.
    out = chat(monkeypatch, capsys, tiny_run, ["a long question " * 20, "hi"])
    assert "error: this message makes a prompt of" in out and "context is 64" in out
    assert out.count("model> ") == 1


def spy_on_prompts(monkeypatch) -> list[list[dict]]:
    """The conversation of each prompt the chat sends to the engine, as it sends them."""
    import llmscratch.tokenizer.chat as chat_module
    from llmscratch.generation.engine import Engine

    encoded, sent = {}, []
    encode, stream = chat_module.encode_chat, Engine.stream

    def spy_encode(tokenizer, messages, *args, **kwargs):
        ids = encode(tokenizer, messages, *args, **kwargs)
        encoded[tuple(ids)] = [dict(m) for m in messages]
        return ids

    def spy_stream(self, prompt_ids, *args, **kwargs):
        assert len(prompt_ids) < self.model.config.context_length
        sent.append(encoded[tuple(prompt_ids)])
        return stream(self, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(chat_module, "encode_chat", spy_encode)
    monkeypatch.setattr(Engine, "stream", spy_stream)
    return sent


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns(
        tiny_run, monkeypatch, capsys):
    sent = spy_on_prompts(monkeypatch)
    questions = [f"question {i}: what say you to the king?" for i in range(5)]
    out = chat(monkeypatch, capsys, tiny_run, questions, "--system", "Be brief.")
    assert out.count("model> ") == 5  # every turn is answered: none is refused
    assert "(dropped the" in out and "outgrew the model's context of 64 tokens)" in out
    for question, messages in zip(questions, sent, strict=True):
        assert messages[0] == {"role": "system", "content": "Be brief."}  # never dropped
        assert messages[-1] == {"role": "user", "content": question}
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * (
            (len(messages) - 2) // 2) + ["user"]  # whole turns go, the oldest first
    assert len(sent[-1]) < len(sent[-2]) + 2  # the last prompts lost turns
    assert sent[-1][1]["content"] != questions[0]


def test_a_line_ending_in_a_backslash_goes_on_and_help_says_so(tiny_run, monkeypatch, capsys):
    sent = spy_on_prompts(monkeypatch)
    out = chat(monkeypatch, capsys, tiny_run, ["/help", "first line \\", "second", "third"])
    assert "end a line with \\ to go on on the next" in out
    assert [m[-1]["content"] for m in sent] == ["first line \nsecond", "third"]


def test_an_over_long_system_message_is_refused_and_reset_leaves_a_working_chat(
        tiny_run, monkeypatch, capsys):
    sent = spy_on_prompts(monkeypatch)
    out = chat(monkeypatch, capsys, tiny_run,
               ["/system Be brief.", "/system " + "speak in verse " * 30, "hi", "/reset", "yo"])
    assert "error: the system message takes" in out and "(the system message is unchanged)" in out
    assert out.count("model> ") == 2
    assert [m[0]["content"] for m in sent] == ["Be brief.", "Be brief."]
    # At the start, the same system message is one error line and exit status 2.
    from llmscratch.cli import main

    assert main(["chat", "--run", str(tiny_run), "--system", "speak in verse " * 30]) == 2
    assert capsys.readouterr().err.startswith("error: the system message takes")


def test_ctrl_c_or_ctrl_d_at_the_prompt_leaves_with_status_0(tiny_run, monkeypatch, capsys):
    from llmscratch.cli import main

    typed = iter(["hi"])

    def keyboard(prompt):
        for line in typed:
            return line
        raise KeyboardInterrupt  # Ctrl-C at the second prompt

    monkeypatch.setattr("builtins.input", keyboard)
    assert main(["chat", "--run", str(tiny_run), "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.count("model> ") == 1
    chat(monkeypatch, capsys, tiny_run, [])  # the end of input (Ctrl-D) at once: status 0


def test_ctrl_c_stops_the_reply_not_the_chat(tiny_run, monkeypatch, capsys):
    from llmscratch.tokenizer.streaming import StopText

    pushed = []
    real_push = StopText.push

    def interrupted(self, token):
        pushed.append(token)
        if len(pushed) == 2:  # the user presses Ctrl-C during the first reply
            raise KeyboardInterrupt
        return real_push(self, token)

    monkeypatch.setattr(StopText, "push", interrupted)
    out = chat(monkeypatch, capsys, tiny_run, ["hello", "and now?"])
    assert "[stopped]" in out and out.count("model> ") == 2  # the chat went on
    assert len(pushed) == 2 + 4  # the second reply ran to its 4 tokens
