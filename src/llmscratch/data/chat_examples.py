"""Conversations as fine-tuning examples: token ids, with targets on the reply alone.

Instruction tuning, the reward model, DPO and RL all read a conversation the
same way: the prompt (an instruction, or the messages of a chat), laid out
as the model will see it when it is asked, then the reply it should write.

- "chat": the model's chat template (tokenizer/chat.py: our documented one,
  or an imported model's Jinja template, the code serving uses). The reply's
  tokens are what the whole conversation's text adds to the prompt's: the
  reply and the template's end marker after it (for ours `<|endoftext|>`
  and a newline).
- "alpaca": the book's Alpaca prompt ("### Instruction: ... ### Response:",
  data/instruction_files.py), then the reply and the end-of-text token.

An Example's inputs are every token but the last and its targets the next
tokens, -100 (IGNORE: not learned) where the next token is still part of the
prompt, so the loss is on the reply and on what ends it (unless training on
all tokens, as the book's chapter 7 does):

    prompt  P0 P1 P2 | reply R0 R1 <end>
    ids     P0 P1 P2 R0 R1
    targets -- -- R0 R1 <end>

The settings come from the run (runs/run.py: GenerationSettings, which has
the fields of `ChatSettings`): its template, the special tokens' text a
template may name, and the stop token that ends an Alpaca reply.
"""

from __future__ import annotations

from typing import Protocol

from llmscratch.data.examples import IGNORE, Example
from llmscratch.data.instruction_files import Conversation, alpaca_prompt
from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.chat import render_chat


class ChatSettings(Protocol):
    """What the encoder reads of a run's generation settings."""

    stop_token_ids: list[int]  # the first ends an Alpaca reply
    chat_template: str | None  # None: ours (tokenizer/chat.py)
    bos_token: str
    eos_token: str


class ChatEncoder:
    """Conversations -> token ids with targets on the reply (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer, settings: ChatSettings, prompt_format: str,
                 train_on_all: bool) -> None:
        self.tokenizer, self.settings = tokenizer, settings
        self.alpaca, self.train_on_all = prompt_format == "alpaca", train_on_all
        self.specials = {"bos_token": settings.bos_token, "eos_token": settings.eos_token}

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        if self.alpaca:
            return self.tokenizer.encode(alpaca_prompt(conversation), disallowed_special="none")
        text = render_chat(conversation.prompt, self.settings.chat_template, True,
                           **self.specials)
        return self.tokenizer.encode(text, allowed_special="all")

    def reply_ids(self, conversation: Conversation) -> list[int]:
        """The reply's tokens and what ends it: the end-of-text token, or the template's end."""
        if self.alpaca:
            ids = self.tokenizer.encode(conversation.response, disallowed_special="none")
            return ids + [self.settings.stop_token_ids[0]]
        prompt = render_chat(conversation.prompt, self.settings.chat_template, True,
                             **self.specials)
        whole = render_chat(conversation.messages, self.settings.chat_template, False,
                            **self.specials)
        if not whole.startswith(prompt):
            raise LLMScratchError(f"{conversation.source or 'a conversation'}: the chat template "
                                  "renders the prompt differently once the reply follows; use "
                                  "finetune.prompt_format=alpaca")
        return self.tokenizer.encode(whole[len(prompt):], allowed_special="all")

    def example(self, conversation: Conversation) -> Example:
        """Inputs are all tokens but the last; targets are the next tokens, IGNORE (-100)
        where the next token is part of the prompt (unless training on all tokens)."""
        prompt, reply = self.prompt_ids(conversation), self.reply_ids(conversation)
        ids = prompt + reply
        targets = ids[1:]
        if not self.train_on_all:
            targets = [IGNORE] * (len(prompt) - 1) + targets[len(prompt) - 1:]
        return Example(ids[:-1], targets)

    def examples(self, conversations: list[Conversation]) -> list[Example]:
        return [self.example(conversation) for conversation in conversations]
