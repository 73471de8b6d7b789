"""Decoding token by token, for text that is printed while it is generated.

A token is a string of bytes, not of characters: GPT-2 spells many emoji and
CJK characters with two or three tokens, each holding part of the character's
UTF-8 encoding. Decoding each token on its own would print U+FFFD for every
part. `StreamDecoder` keeps the bytes of an unfinished character until the
token that completes it arrives, using the standard library's incremental
UTF-8 decoder (`codecs.getincrementaldecoder`), so it never emits half a
character. Bytes that can never become a character (an invalid sequence) are
emitted as U+FFFD, exactly as `Tokenizer.decode` would write them.

    decoder = StreamDecoder(tokenizer)
    for token_id in generated_ids:
        print(decoder.push(token_id), end="", flush=True)
    print(decoder.flush())

The text printed this way always equals ``tokenizer.decode(generated_ids)``.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer.tokenizer import Tokenizer


class StreamDecoder:
    """Turns a stream of token ids into text, one complete character at a time."""

    def __init__(self, tokenizer: Tokenizer, errors: str = "replace") -> None:
        if errors not in ("replace", "strict"):
            raise LLMScratchError(f"errors={errors!r} is not valid; use 'replace' or 'strict'")
        self._token_bytes = tokenizer.token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        return self._decode(self._token_bytes(int(token_id)), final=False)

    def push_many(self, token_ids: Iterable[int]) -> str:
        """Add several tokens at once; return the text they complete."""
        data = b"".join(self._token_bytes(int(token_id)) for token_id in token_ids)
        return self._decode(data, final=False)

    def flush(self) -> str:
        """End of stream: return what is left (an unfinished character becomes U+FFFD)."""
        return self._decode(b"", final=True)

    @property
    def pending_bytes(self) -> int:
        """How many bytes of an unfinished character are held back."""
        return len(self._utf8.getstate()[0])

    def _decode(self, data: bytes, final: bool) -> str:
        try:
            return self._utf8.decode(data, final)
        except UnicodeDecodeError as exc:
            raise LLMScratchError(
                f"generated tokens form invalid UTF-8 ({exc.reason}); "
                "use errors='replace' to show it as U+FFFD"
            ) from None
