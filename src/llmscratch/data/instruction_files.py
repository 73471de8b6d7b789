"""Instruction data for supervised fine-tuning (the book's chapter 7), read from the user's files.

Two shapes of record are common, and both are read into one `Conversation`:

- Alpaca (the book's `instruction-data.json`): `{"instruction": ..., "input": ...,
  "output": ...}`; `input` may be empty or absent.
- chat (OpenAI's): `{"messages": [{"role": "system" | "user" | "assistant",
  "content": ...}, ...]}`, ending with the assistant's reply.

A `.json` file holds a list of records; a `.jsonl` file one record a line.
A record with a `messages` key is a chat, any other an Alpaca record; other
keys are ignored.

A `Conversation` keeps apart what the model is given and what it learns to
write: `prompt` is the messages before the reply, `response` the reply.
SFT computes its loss on the response only (and the end-of-text token after
it); earlier assistant turns of a chat are context, not trained on. The
prompt becomes text in one of two ways:

- a chat template (tokenizer/chat.py: `render_chat(prompt)`), for chat models;
- the book's Alpaca format (`alpaca_prompt`), which an Alpaca record keeps
  its `instruction` and `input` for:

      Below is an instruction that describes a task. Write a response that
      appropriately completes the request.

      ### Instruction:
      {instruction}

      ### Input:
      {input}

      ### Response:
      {response}

  (the Input section only when there is an input; the response is not part
  of `alpaca_prompt`'s text).

Every mistake is one line naming the file and the line of the record:
malformed JSON, a missing or empty field, an unknown role, a chat that does
not end with the assistant, an empty file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.io import read_json_records
from llmscratch.tokenizer.chat import ROLES

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class Conversation:
    """One SFT example: the prompt messages, and the reply the model learns to write.

    prompt: dicts with "role" and "content" (the form `render_chat` takes).
    response: the assistant's final reply, the only text trained on.
    instruction, input: an Alpaca record's fields (None for a chat), to build
    the book's prompt text exactly.
    """

    prompt: list[dict]
    response: str
    instruction: str | None = None
    input: str = ""
    source: str = field(default="", compare=False)  # "file:line", for messages

    @property
    def messages(self) -> list[dict]:
        """The whole conversation, the reply included (to render for training)."""
        return [*self.prompt, {"role": "assistant", "content": self.response}]


def from_alpaca(instruction: str, input: str, output: str, source: str = "") -> Conversation:
    """An Alpaca record as a conversation: one user message, instruction then input."""
    user = f"{instruction}\n\n{input}" if input else instruction
    return Conversation([{"role": "user", "content": user}], output, instruction, input, source)


def format_alpaca_prompt(instruction: str, input: str = "") -> str:
    """The book's `format_input(entry)` followed by the response header it trains after."""
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
    if input:
        text += f"\n\n### Input:\n{input}"
    return text + "\n\n### Response:\n"


def alpaca_prompt(conversation: Conversation) -> str:
    """The prompt in the book's Alpaca format.

    A chat of one user message reads as an instruction without input;
    a longer chat, or one with a system message, has no Alpaca form.
    """
    if conversation.instruction is not None:
        return format_alpaca_prompt(conversation.instruction, conversation.input)
    if len(conversation.prompt) != 1:
        raise LLMScratchError(f"{conversation.source}: a chat of {len(conversation.prompt) + 1} "
                              "messages has no Alpaca form; use a chat template instead")
    return format_alpaca_prompt(conversation.prompt[0]["content"])


# ---- reading files ---------------------------------------------------------------------------

def read_instructions(path: str | Path) -> list[Conversation]:
    """The records of a .json (a list) or .jsonl (one a line) file of Alpaca or chat records."""
    path = Path(path)
    return [_conversation(path, line, record) for line, record in read_records(path,
                                                                              "instructions")]


def read_records(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for each record of a .json (a list) or .jsonl file of `what`."""
    if path.suffix not in (".json", ".jsonl"):
        raise LLMScratchError(f"cannot read {what} from {path}: its extension is not "
                              ".json or .jsonl; rename or convert it")
    return read_json_records(path)


def _conversation(path: Path, line: int, record: dict) -> Conversation:
    where = f"{path}:{line}"
    if "messages" in record:
        return _chat(where, record["messages"])
    fields = {}
    for name in ("instruction", "input", "output"):
        value = record.get(name, "")
        if not isinstance(value, str):
            raise LLMScratchError(f"{where}: field {name!r} must be a string, not "
                                  f"{type(value).__name__}")
        if name != "input" and not value.strip():
            state = "empty" if name in record else "missing"
            raise LLMScratchError(f"{where}: field {name!r} is {state}; an Alpaca record needs "
                                  "'instruction' and 'output' (and may have 'input')")
        fields[name] = value
    return from_alpaca(fields["instruction"], fields["input"], fields["output"], where)


def chat_messages(where: str, messages, last: str = "assistant") -> list[dict]:
    """Messages checked: known roles, text in each, a user message, the right one last."""
    if not isinstance(messages, list) or not messages:
        raise LLMScratchError(f"{where}: 'messages' must be a non-empty list of messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise LLMScratchError(f"{where}: message {i} needs a 'role' and a 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise LLMScratchError(f"{where}: message {i} has the unknown role {role!r}; roles "
                                  f"are {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise LLMScratchError(f"{where}: message {i} ({role}) has no text in 'content'")
        checked.append({"role": role, "content": content})
    if last == "assistant" and checked[-1]["role"] != "assistant":
        raise LLMScratchError(f"{where}: the conversation ends with a {checked[-1]['role']} "
                              "message; it must end with the assistant's reply to train on")
    if last == "user" and checked[-1]["role"] == "assistant":
        raise LLMScratchError(f"{where}: the prompt ends with an assistant message; it must "
                              "end with the message the model answers")
    if not any(m["role"] == "user" for m in checked):
        raise LLMScratchError(f"{where}: the conversation has no user message")
    return checked


def _chat(where: str, messages) -> Conversation:
    """A chat record's messages (checked), the last being the reply."""
    checked = chat_messages(where, messages)
    return Conversation(checked[:-1], checked[-1]["content"], source=where)
