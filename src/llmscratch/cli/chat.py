"""`llmscratch chat`: talk to a run's model in the terminal, its replies streamed.

    you> What is the capital of France?
    model> Paris.
    you> Write two lines, \\           a line ending in a backslash goes on
    ...> then stop.                     on the next (one message, two lines)
    you> /system Answer in French.      set the system message (and start over)
    you> /reset                         forget the conversation
    you> /help                          these commands
    you> /exit                          (or Ctrl-D, or Ctrl-C at the prompt) leave

Each turn renders the whole conversation with the run's chat template
(tokenizer/chat.py: an imported model's own, or ours), and the engine
(generation/engine.py) continues it, token by token, until the model's stop
token or --max-new-tokens. Ctrl-C stops the reply being written, not the
program: the part already written stays in the conversation.

The model sees at most its context length. When the conversation outgrows
it, the oldest turns (a message and its reply) are dropped, never the system
message, until the prompt leaves room for a full reply (--max-new-tokens, at
most half the context), and the chat says so. A system message that leaves
no such room is refused, so every later turn can run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from llmscratch.cli.common import add_command, say
from llmscratch.cli.generate import (
    add_device_options,
    add_speculative_options,
    engine_speculation,
    load_draft_model,
)
from llmscratch.errors import LLMScratchError

HELP = ("/system TEXT sets the system message and starts over, /reset forgets the "
        "conversation, /help, /exit (or Ctrl-D, or Ctrl-C at the prompt); end a line with \\ "
        "to go on on the next; Ctrl-C during a reply stops it")


def register(sub) -> None:
    p = add_command(sub, "chat", "Chat with a run's model in the terminal, replies streamed.",
                    "  llmscratch chat --run runs/qwen3-0.6b --temperature 0.7\n"
                    "  llmscratch chat --run runs/sft --system 'You are terse.'\n"
                    "  llmscratch chat --run runs/sft --speculative prompt-lookup\n"
                    "  llmscratch chat --run runs/big --speculative runs/small --draft-tokens 4\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--system", default="", help="a system message to start with")
    p.add_argument("--max-new-tokens", type=int, default=512, help="at most this many a reply")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same conversation")
    add_speculative_options(p)
    add_device_options(p)
    p.set_defaults(func=cmd_chat)


@dataclass
class Conversation:
    """The system message and the turns so far, and the prompt they make for a new message.

    encode: messages -> the prompt's token ids (the chat template, then the
    tokenizer). context: the model's context length. room: tokens a prompt
    should leave free for the reply.
    """

    encode: Callable[[list[dict]], list[int]]
    context: int
    room: int
    system: str = ""
    turns: list[dict] = field(default_factory=list)  # user, assistant, user, assistant, ...

    def messages(self, turns: list[dict], message: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + turns + [{"role": "user", "content": message}]

    def set_system(self, system: str) -> None:
        """A new system message, and a new conversation; refused if it leaves no room."""
        used = len(self.encode([{"role": "system", "content": system},
                                {"role": "user", "content": ""}])) if system else 0
        if used + self.room > self.context:
            raise LLMScratchError(f"the system message takes {used} of the model's "
                                  f"{self.context} tokens of context, leaving less than the "
                                  f"{self.room} a reply needs; shorten it")
        self.system, self.turns = system, []

    def fit(self, message: str) -> tuple[list[int], list[dict]]:
        """The prompt for `message`, and the turns it keeps: the oldest go, two messages at a
        time, until the prompt leaves `room` tokens, or none is left."""
        turns = self.turns
        prompt = self.encode(self.messages(turns, message))
        while turns and len(prompt) + self.room > self.context:
            turns = turns[2:]
            prompt = self.encode(self.messages(turns, message))
        if len(prompt) >= self.context:
            with_system = " with the system message" if self.system else ""
            raise LLMScratchError(f"this message makes a prompt of {len(prompt)} tokens"
                                  f"{with_system}; the model's context is {self.context}: "
                                  "shorten it")
        return prompt, turns


def cmd_chat(args: argparse.Namespace) -> int:
    from llmscratch.distributed import resolve_device
    from llmscratch.generation.cpu_weights import pack_linear_weights
    from llmscratch.generation.engine import Engine
    from llmscratch.generation.quantize import quantize_linear_weights
    from llmscratch.generation.sampling import SamplingConfig
    from llmscratch.runs.load import load_for_inference
    from llmscratch.tokenizer import StopText
    from llmscratch.tokenizer.chat import encode_chat

    draft_tokens, draft_run = engine_speculation(args)  # --speculative (0: off)
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, top_p=args.top_p,
                              seed=args.seed)
    device = resolve_device(args.device)
    model, tokenizer, settings = load_for_inference(args.run, device, args.dtype)
    quantize_linear_weights(model, args.quantize)  # --quantize int8|int4 (None: unchanged)
    pack_linear_weights(model)  # on the CPU: oneDNN's kernels where faster (inference only)
    draft = load_draft_model(draft_run, tokenizer, device, args.dtype) if draft_run else None
    engine = Engine(model, max_batch=1, vocab_size=tokenizer.vocab_size,
                    draft_tokens=draft_tokens, draft_model=draft)
    context = model.config.context_length

    def encode(messages: list[dict]) -> list[int]:
        return encode_chat(tokenizer, messages, settings.chat_template,
                           bos_token=settings.bos_token, eos_token=settings.eos_token)

    chat = Conversation(encode, context, room=min(args.max_new_tokens, context // 2))
    chat.set_system(args.system)
    say(f"chatting with {args.run} (/help for the commands)")
    if engine.prefix_caching_off:  # each turn computes the whole conversation again
        say(f"note: {engine.prefix_caching_off}")
    while True:
        text = _read()
        if text is None:
            return 0
        command, rest = (text.strip().split(maxsplit=1) + ["", ""])[:2]
        if command == "/exit":
            return 0
        if command.startswith("/"):
            _command(chat, command, rest)
            continue
        if not command:
            continue
        try:
            prompt, kept = chat.fit(text)
            stream = engine.stream(prompt, sampling, settings.stop_token_ids)
        except LLMScratchError as err:
            say(f"error: {err}")
            continue
        if len(kept) < len(chat.turns):
            dropped = (len(chat.turns) - len(kept)) // 2
            turns = "the oldest turn" if dropped == 1 else f"the {dropped} oldest turns"
            say(f"(dropped {turns}: the conversation outgrew the model's context of "
                f"{context} tokens)")
        reply = _write_reply(stream, StopText(tokenizer))
        chat.turns = kept + [{"role": "user", "content": text},
                             {"role": "assistant", "content": reply}]


def _command(chat: Conversation, command: str, rest: str) -> None:
    """/system, /reset, /help; anything else gets the list."""
    if command == "/reset":
        chat.turns = []
        say("(conversation reset)")
    elif command == "/system":
        try:
            chat.set_system(rest.strip())
        except LLMScratchError as err:
            say(f"error: {err} (the system message is unchanged)")
            return
        say(f"(system message {'set' if chat.system else 'cleared'}; conversation reset)")
    elif command == "/help":
        say(HELP)
    else:
        say(f"unknown command {command}; {HELP}")


def _read() -> str | None:
    """What the user types; None to leave (the end of input, or Ctrl-C at the prompt).

    A line ending in a backslash goes on on the next: the backslash is dropped,
    and the lines make one message, joined by line breaks.
    """
    lines, prompt = [], "you> "
    while True:
        try:
            line = input(prompt)
        except (EOFError, KeyboardInterrupt):
            say()
            return None
        if not line.endswith("\\"):
            return "\n".join([*lines, line])
        lines.append(line[:-1])
        prompt = "...> "


def _write_reply(stream, text) -> str:
    """Print the reply as it comes; Ctrl-C stops it (the request is aborted) and keeps the part
    written so far."""
    reply = ""
    say("model> ", end="")
    try:
        for token in stream:
            piece = text.push(token)
            reply += piece
            say(piece, end="")
    except KeyboardInterrupt:
        stream.close()
        say(" [stopped]")
        return reply
    tail = text.flush()
    say(tail)
    sys.stdout.flush()
    return reply + tail
