"""GPT-2's printable alphabet for bytes, used to write tokens in text files.

A byte-level token is a string of bytes, and many bytes (spaces, newlines,
control codes, halves of UTF-8 characters) cannot be written readably in JSON
or in a whitespace-separated merges file. GPT-2's release solved this with a
fixed one-to-one map from the 256 byte values to 256 printable characters:

- the 188 bytes that are already printable Latin-1 characters and not a space
  (``!`` to ``~``, ``¡`` to ``¬``, ``®`` to ``ÿ``) stand for themselves;
- the other 68 bytes (0-32, 127-160, 173), in increasing order, are mapped to
  the code points 256, 257, ... 323.

So the space byte 32 is written ``Ġ`` (U+0120), newline 10 is ``Ċ`` (U+010A),
and the token " the" is written ``Ġthe``. GPT-2's ``encoder.json`` and
``vocab.bpe``, Hugging Face's ``tokenizer.json`` (ByteLevel) and our own
``tokenizer.json`` all use this alphabet.
"""

from __future__ import annotations

from llmscratch.errors import LLMScratchError


def _printable_bytes() -> list[int]:
    """The byte values GPT-2 keeps as their own Latin-1 character, in order."""
    return [b for b in range(256) if chr(b).isprintable() and b != ord(" ")]


def _build_maps() -> tuple[dict[int, str], dict[str, int]]:
    byte_to_char: dict[int, str] = {b: chr(b) for b in _printable_bytes()}
    next_code_point = 256
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(next_code_point)
            next_code_point += 1
    char_to_byte = {char: b for b, char in byte_to_char.items()}
    return byte_to_char, char_to_byte


BYTE_TO_CHAR, CHAR_TO_BYTE = _build_maps()

# GPT-2 numbers its 256 single-byte tokens in this order (printable bytes
# first, then the others), so byte b has id BYTE_RANK_ORDER.index(b).
BYTE_RANK_ORDER: list[int] = _printable_bytes() + [
    b for b in range(256) if b not in set(_printable_bytes())
]


def bytes_to_printable(token: bytes) -> str:
    """Write a token's bytes in GPT-2's printable alphabet: b" the" -> "Ġthe"."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def printable_to_bytes(text: str, source: str = "token") -> bytes:
    """Inverse of `bytes_to_printable`; `source` names the file in errors."""
    try:
        return bytes(CHAR_TO_BYTE[char] for char in text)
    except KeyError as exc:
        raise LLMScratchError(
            f"{source}: token {text!r} has character {exc.args[0]!r} outside GPT-2's byte "
            "alphabet; the file is not a byte-level BPE vocabulary"
        ) from None
