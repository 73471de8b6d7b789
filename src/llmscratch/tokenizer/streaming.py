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

`StopText` adds stop strings on top: generation ends where one appears, the
stop string itself is not part of the text, and text that might be the
beginning of a stop string is held back until the next tokens say whether
it is (a stop string may span several tokens: "\n\nUser:" can arrive as
"\n", "\nUser" and ":").
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


class StopText:
    """Generated text, complete characters only, cut at the first of `stop` strings.

        text = StopText(tokenizer, stop=["\n\nUser:"])
        for token_id in generated_ids:
            print(text.push(token_id), end="")
            if text.stopped:
                break
        print(text.flush())
    """

    def __init__(self, tokenizer: Tokenizer, stop: Iterable[str] = ()) -> None:
        self.stop = [s for s in stop if s]
        self._decoder = StreamDecoder(tokenizer)
        self._pending = ""  # text held back: it may be the start of a stop string
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now certain to be output."""
        if self.stopped:
            return ""
        self._pending += self._decoder.push(token_id)
        cut = min((i for i in (self._pending.find(s) for s in self.stop) if i >= 0),
                  default=-1)
        if cut >= 0:  # a stop string: output what comes before it, and nothing more
            self.stopped = True
            text, self._pending = self._pending[:cut], ""
            return text
        split = len(self._pending) - self._held_back()
        text, self._pending = self._pending[:split], self._pending[split:]
        return text

    def flush(self) -> str:
        """End of generation: the text held back (it was not a stop string after all)."""
        if self.stopped:
            return ""
        text, self._pending = self._pending + self._decoder.flush(), ""
        return text

    def _held_back(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(s[:n]):
                    longest = n
                    break
        return longest
