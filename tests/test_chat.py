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
        ["system", "user"],  # a new system message starts the conversation over
        ["system", "user"],  # /reset forgets the turns, keeps the system message
    ]
    assert out.count("model> ") == 4 and "unknown command /nope" in out
    # A conversation that outgrows the context is one line, and the chat goes on.
    out = chat(monkeypatch, capsys, tiny_run, ["a long question " * 20, "/reset", "hi"])
    assert "context length is 64" in out and "/reset to start over" in out
    assert out.count("model> ") == 1


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
