"""Alignment data: preference pairs (reward models, DPO) and prompts (RL), from files or generated.

Preference pairs. A prompt, the response people preferred and one they
rejected. A .json file holds a list of records, a .jsonl file one a line, in
any of the shapes preference data is shared in:

- plain: `{"prompt": "...", "chosen": "...", "rejected": "..."}`;
- chat (TRL's conversational form): `{"prompt": [messages], "chosen":
  [{"role": "assistant", "content": ...}], "rejected": [...]}`;
- the book's preference JSON (its chapter 7 bonus: DPO): its instruction
  entries (`instruction`, `input`, `output`) with `chosen` and `rejected`
  added (`output` is then ignored).

Prompts for RL. `{"prompt": "..." or [messages]}` or an Alpaca
`{"instruction", "input"}`; every other field of the record is passed to the
reward function by name (TRL's convention: a field `answer` becomes the
argument `answer=[...]`), so a verifiable reward can check against it.

Data shipped with the project, "synthetic": pairs and prompts from the
synthetic tasks (data/synthetic_tasks.py), whose answers a program checks.

Mistakes are one line naming the file and the record's line: a missing
field, an empty response. A pair whose chosen and rejected responses are the
same text is read, but teaches nothing (its DPO loss is a constant, its
Bradley-Terry gradient zero): `Preference.is_tie` marks it, and the recipes
skip and count it (recipes/pairs.py). The book's chapter 7 file has six.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.data.instruction_files import Conversation, chat_messages, from_alpaca, read_records
from llmscratch.data.synthetic_tasks import PreferencePair, TaskExample
from llmscratch.errors import LLMScratchError


@dataclass(frozen=True)
class Preference:
    """A prompt (as a conversation's prompt) with a chosen and a rejected response."""

    prompt: Conversation  # its `response` is empty: the two responses are below
    chosen: str
    rejected: str

    @property
    def source(self) -> str:
        return self.prompt.source

    @property
    def is_tie(self) -> bool:
        """Chosen and rejected are the same response (but for surrounding spaces)."""
        return self.chosen.strip() == self.rejected.strip()

    def conversations(self) -> tuple[Conversation, Conversation]:
        """The prompt answered with the chosen response, and with the rejected one."""
        p = self.prompt
        return (Conversation(p.prompt, self.chosen, p.instruction, p.input, p.source),
                Conversation(p.prompt, self.rejected, p.instruction, p.input, p.source))


@dataclass(frozen=True)
class Prompt:
    """An RL prompt, and the record's other fields for the reward function."""

    prompt: Conversation  # its `response` is empty: the model writes it
    columns: dict = field(default_factory=dict)


def from_task(example: TaskExample) -> Prompt:
    """A synthetic task's prompt; its fields (task, input, output, ...) go to the reward."""
    return Prompt(from_alpaca(example.instruction, example.input, ""), example.to_dict())


def from_pair(pair: PreferencePair) -> Preference:
    e = pair.example
    return Preference(from_alpaca(e.instruction, e.input, ""), pair.chosen, pair.rejected)


# ---- reading files ---------------------------------------------------------------------------

def read_preferences(path: str | Path) -> list[Preference]:
    """The preference pairs of a .json or .jsonl file (see the module docstring)."""
    path = Path(path)
    return [_preference(f"{path}:{line}", record)
            for line, record in read_records(path, "preference pairs")]


def read_prompts(path: str | Path) -> list[Prompt]:
    """The RL prompts of a .json or .jsonl file (see the module docstring)."""
    path = Path(path)
    prompts = []
    for line, record in read_records(path, "prompts"):
        where = f"{path}:{line}"
        conversation = _prompt(where, record)
        used = ("prompt", "messages", "instruction", "input")
        prompts.append(Prompt(conversation, {k: v for k, v in record.items() if k not in used}))
    return prompts


def _preference(where: str, record: dict) -> Preference:
    for name in ("chosen", "rejected"):
        if name not in record:
            raise LLMScratchError(f"{where}: field {name!r} is missing; a preference pair needs "
                                  "a prompt (or instruction), 'chosen' and 'rejected'")
    chosen = _response(where, "chosen", record["chosen"])
    rejected = _response(where, "rejected", record["rejected"])
    return Preference(_prompt(where, record), chosen, rejected)


def _prompt(where: str, record: dict) -> Conversation:
    """The prompt of a record: `prompt` (text or messages), `messages`, or Alpaca fields."""
    if "prompt" in record:
        prompt = record["prompt"]
        if isinstance(prompt, list):
            return Conversation(chat_messages(where, prompt, last="user"), "", source=where)
        if not isinstance(prompt, str) or not prompt.strip():
            raise LLMScratchError(f"{where}: field 'prompt' must be a non-empty text or a list "
                                  "of messages")
        return Conversation([{"role": "user", "content": prompt}], "", source=where)
    if "messages" in record:
        return Conversation(chat_messages(where, record["messages"], last="user"), "",
                            source=where)
    instruction, input = record.get("instruction"), record.get("input", "")
    if not isinstance(instruction, str) or not instruction.strip() or not isinstance(input, str):
        raise LLMScratchError(f"{where}: no prompt: give 'prompt', 'messages', or "
                              "'instruction' (and 'input')")
    return from_alpaca(instruction, input, "", where)


def _response(where: str, name: str, value) -> str:
    """A response: a text, or (chat form) a list ending with the assistant's message."""
    if isinstance(value, list):  # TRL's conversational form: [{"role": "assistant", ...}]
        last = value[-1] if value else {}
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise LLMScratchError(f"{where}: field {name!r} must end with an assistant message")
        value = last.get("content", "")
    if not isinstance(value, str):
        raise LLMScratchError(f"{where}: field {name!r} must be a text or a list of messages, "
                              f"not {type(value).__name__}")
    if not value.strip():
        raise LLMScratchError(f"{where}: field {name!r} is empty; a response needs text")
    return value
