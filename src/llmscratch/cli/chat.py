"""`llmscratch chat`: talk to a run's model in the terminal, its replies streamed.

    you> What is the capital of France?
    model> Paris.
    you> /system Answer in French.      set the system message (and start over)
    you> /reset                         forget the conversation
    you> /exit                          (or Ctrl-D) leave

Each turn renders the whole conversation with the run's chat template
(tokenizer/chat.py: an imported model's own, or ours), and the engine
(generation/engine.py) continues it, token by token, until the model's stop
token or --max-new-tokens. Ctrl-C stops the reply being written, not the
program: the part already written stays in the conversation.
"""

from __future__ import annotations

import argparse
import sys

from llmscratch.cli.common import add_command, say
from llmscratch.cli.generate import add_device_options
from llmscratch.errors import LLMScratchError

HELP = "commands: /system TEXT, /reset, /exit (or Ctrl-D); Ctrl-C stops a reply"


def register(sub) -> None:
    p = add_command(sub, "chat", "Chat with a run's model in the terminal, replies streamed.",
                    "  llmscratch chat --run runs/qwen3-0.6b --temperature 0.7\n"
                    "  llmscratch chat --run runs/sft --system 'You are terse.'\n")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--system", default="", help="a system message to start with")
    p.add_argument("--max-new-tokens", type=int, default=512, help="at most this many a reply")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same conversation")
    add_device_options(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from llmscratch.distributed import resolve_device
    from llmscratch.generation.cpu_weights import pack_linear_weights
    from llmscratch.generation.engine import Engine
    from llmscratch.generation.sampling import SamplingConfig
    from llmscratch.runs.load import load_for_inference
    from llmscratch.tokenizer import StopText
    from llmscratch.tokenizer.chat import encode_chat

    sampling = SamplingConfig(args.max_new_tokens, args.temperature, top_p=args.top_p,
                              seed=args.seed)
    model, tokenizer, settings = load_for_inference(args.run, resolve_device(args.device),
                                                    args.dtype)
    pack_linear_weights(model)  # on the CPU: oneDNN's faster kernels (only inference follows)
    engine = Engine(model, max_batch=1, vocab_size=tokenizer.vocab_size)
    system = args.system
    history: list[dict] = []
    say(f"chatting with {args.run} ({HELP})")
    while True:
        line = _read("you> ")
        if line is None or line.strip() == "/exit":
            return 0
        command, _, rest = line.strip().partition(" ")
        if command == "/reset":
            history = []
            say("(conversation reset)")
            continue
        if command == "/system":
            system, history = rest.strip(), []
            say("(system message set; conversation reset)")
            continue
        if not line.strip() or command.startswith("/"):
            if command.startswith("/"):
                say(f"unknown command {command}; {HELP}")
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + history + [
            {"role": "user", "content": line}]
        try:
            prompt = encode_chat(tokenizer, messages, settings.chat_template,
                                 bos_token=settings.bos_token, eos_token=settings.eos_token)
            stream = engine.stream(prompt, sampling, settings.stop_token_ids)
        except LLMScratchError as err:  # the conversation outgrew the context, say
            say(f"error: {err}; /reset to start over")
            continue
        reply = _write_reply(stream, StopText(tokenizer))
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": reply}]


def _read(prompt: str) -> str | None:
    """A line of input, or None at the end of input; Ctrl-C at the prompt clears the line."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            say()
            return None
        except KeyboardInterrupt:
            say()


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
