"""Chat templates: a conversation as the text a chat model was trained to continue.

A chat model never sees "messages"; it sees one text in which each message
is wrapped in markers, and it learns to write the assistant's part and then
an end marker. The template that does the wrapping is part of the model:
generating with another template than the one it was fine-tuned with gives
worse answers. So:

- an imported model uses its own template, the Jinja source in its
  tokenizer_config.json (`chat_template`), rendered the way `transformers`
  renders it: a sandboxed Jinja environment with `trim_blocks` and
  `lstrip_blocks`, and the helpers templates call (`raise_exception`, a
  `tojson` that does not escape HTML, `strftime_now`);
- a model trained here uses DEFAULT_TEMPLATE, which needs no special token
  but the `<|endoftext|>` every tokenizer of ours has:

      <|system|>
      You are a poet.<|endoftext|>
      <|user|>
      Write about the sea.<|endoftext|>
      <|assistant|>

  Fine-tuning trains on the assistant's text and the `<|endoftext|>` after
  it; generation stops at that token (the run's stop id).

Serving renders a conversation and continues it; fine-tuning renders the
whole conversation and learns its assistant parts: both call `render_chat`
(`encode_chat` also turns the text into ids, the markers into their special
tokens; like `transformers` and vLLM, special-token text inside a message is
read as that token, so a model served to strangers should not trust it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|endoftext|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    """The Jinja environment chat templates are written for (as `transformers` builds it).

    Sandboxed and immutable: a template from the hub is untrusted code, and
    may neither reach Python internals nor change the data it is given.
    """
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """The messages as plain dicts, or one line naming the first that is not a message."""
    if not messages:
        raise LLMScratchError("the conversation is empty: give at least one message")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise LLMScratchError(f"message {i} must have a 'role' and a text 'content'")
        if message.get("role") not in ROLES:
            raise LLMScratchError(f"message {i} has role {message.get('role')!r}; roles are "
                                  f"{', '.join(ROLES)}")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def render_chat(messages: Sequence[dict], template: str | None = None,
                add_generation_prompt: bool = True, **special_tokens: str) -> str:
    """The conversation as text, by `template` (None: DEFAULT_TEMPLATE).

    add_generation_prompt: end with the assistant's opening marker, so that
    the model's continuation is the reply. special_tokens: what the template
    may name, such as bos_token="<|begin_of_text|>" (a tokenizer_config.json's
    `bos_token` and `eos_token`).
    """
    checked = check_messages(messages)
    try:
        compiled = _environment().from_string(template or DEFAULT_TEMPLATE)
        return compiled.render(messages=checked, add_generation_prompt=add_generation_prompt,
                               **special_tokens)
    except jinja2.exceptions.TemplateError as err:  # syntax, or the template's own refusal
        raise LLMScratchError(f"the chat template failed: {err}") from None


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict], template: str | None = None,
                add_generation_prompt: bool = True, **special_tokens: str) -> list[int]:
    """`render_chat`, then the token ids of that text, special tokens included."""
    text = render_chat(messages, template, add_generation_prompt, **special_tokens)
    return tokenizer.encode(text, allowed_special="all")
