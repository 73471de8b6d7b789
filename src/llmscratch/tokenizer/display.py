"""Showing how a tokenizer cuts text: per-token records and a coloured rendering.

`inspect_text` encodes a text and describes every token: its id, its bytes
(hex) and how it reads. A token that is part of a multi-byte character does
not read as text on its own; it is shown as its bytes, e.g. ``<e4><bd>``.
`render_tokens` prints the tokens with alternating background colours (ANSI
escape codes) or, without colour, separated by ``|``; whitespace is made
visible (``·`` space, ``→`` tab, ``↵`` newline) so every boundary shows.

Two summary figures compare tokenizers on the same text: bytes per token
(higher: the text is compressed more, so a model sees more text per step)
and tokens per word (how often a word is cut; words are split on whitespace).
"""

from __future__ import annotations

from llmscratch.tokenizer.tokenizer import Tokenizer

_BACKGROUNDS = ("\x1b[48;5;153m", "\x1b[48;5;223m", "\x1b[48;5;194m", "\x1b[48;5;225m")
_FOREGROUND = "\x1b[38;5;16m"
_RESET = "\x1b[0m"
_VISIBLE_WHITESPACE = str.maketrans({" ": "·", "\t": "→", "\n": "↵\n", "\r": "␍"})


def inspect_text(tokenizer: Tokenizer, text: str) -> dict:
    """Encode `text` (special tokens allowed) and describe each token and the totals."""
    ids = tokenizer.encode(text, allowed_special="all")
    tokens = []
    for token_id in ids:
        data = tokenizer.token_bytes(token_id)
        try:
            shown = data.decode("utf-8")
        except UnicodeDecodeError:
            shown = "".join(f"<{byte:02x}>" for byte in data)
        tokens.append({"id": token_id, "bytes": data.hex(), "text": shown})
    n_bytes = len(text.encode("utf-8"))
    n_words = len(text.split())
    return {
        "tokens": tokens,
        "n_tokens": len(ids),
        "n_bytes": n_bytes,
        "n_words": n_words,
        "bytes_per_token": n_bytes / max(len(ids), 1),
        "tokens_per_word": len(ids) / max(n_words, 1),
    }


def render_tokens(tokens: list[dict], color: bool) -> str:
    """The tokens side by side, each visibly separate from the next."""
    parts = []
    for index, token in enumerate(tokens):
        shown = token["text"].translate(_VISIBLE_WHITESPACE)
        if color:
            background = _BACKGROUNDS[index % len(_BACKGROUNDS)]
            # Colour each line of a token separately, so a newline does not
            # drag the background across the rest of the terminal line.
            lines = shown.split("\n")
            parts.append("\n".join(f"{background}{_FOREGROUND}{line}{_RESET}" for line in lines))
        else:
            parts.append(shown)
    return "".join(parts) if color else "|".join(parts)
