"""Pre-tokenization: the regular expression that cuts text into words before BPE.

Byte-level BPE never merges across the boundaries drawn here. Splitting first
keeps tokens meaningful ("dog", "dog." and "dog!" share the token " dog"
instead of each getting its own) and makes training and encoding fast: the
trainer counts each distinct word once, and the encoder caches each word's ids.

Three patterns are offered by name:

- ``gpt2``: GPT-2's pattern (Radford et al., 2019). Contractions ('s 't 're 've
  'm 'll 'd), then runs of letters, of digits, or of other symbols, each with an
  optional leading space, then whitespace. This is the form tiktoken uses for
  its ``gpt2`` encoding; it matches the same pieces as the published
  ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
  (possessive quantifiers only stop useless backtracking).
- ``gpt4``: the ``cl100k_base`` pattern of GPT-4. Contractions ignore case,
  digits are grouped at most three at a time, a letter run may take one leading
  non-letter (so "\\tfoo" and "(foo" stay one piece), and newlines are kept
  apart from other whitespace.
- ``none``: no splitting; each document (between special tokens) is one word.
  Only sensible for short texts, since a word is re-scanned at every merge.

The `regex` package is used rather than `re` for the Unicode classes ``\\p{L}``
(any letter) and ``\\p{N}`` (any number).
"""

from __future__ import annotations

from collections.abc import Iterator

import regex

from llmscratch.errors import LLMScratchError

GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# A pattern that matches the whole string in one piece (``(?s)`` lets "." match
# newlines). Kept as a real regex so every tokenizer has one pattern string.
NO_SPLIT_PATTERN = r"""(?s).+"""

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN, "none": NO_SPLIT_PATTERN}


def resolve_pattern(name: str) -> str:
    """The regex string for a pattern name ("gpt2", "gpt4" or "none")."""
    try:
        return PATTERNS[name]
    except KeyError:
        raise LLMScratchError(
            f"unknown pre-tokenizer pattern {name!r}; use one of: {', '.join(PATTERNS)}"
        ) from None


def pattern_name(pattern: str) -> str | None:
    """The name of a known pattern string, or None for any other regex."""
    for name, known in PATTERNS.items():
        if known == pattern:
            return name
    return None


def split_at_safe_points(text: str, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Cut a long text into chunks of about `chunk_chars` characters.

    The cut is placed just before a space that follows a non-space character
    ("word| next"). Under the gpt2 and gpt4 patterns no piece contains a
    non-space followed by a space, neither pattern looks behind, and the piece
    before the cut ends in a non-space (so the look-aheads ``(?!\\S)`` and
    ``$``, which only follow whitespace, do not fire there). Hence splitting
    each chunk gives exactly the pieces of splitting the whole text, while
    `regex.findall` never has to build one list for a 100 MB file.
    Do not use with the "none" pattern, which must see the whole text.
    """
    start = 0
    while len(text) - start > chunk_chars:
        cut = text.find(" ", start + chunk_chars)
        while cut != -1 and (text[cut - 1].isspace()):
            cut = text.find(" ", cut + 1)
        if cut == -1:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """Compile a pre-tokenizer regex, turning a bad one into a one-line error."""
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise LLMScratchError(
            f"invalid pre-tokenizer regex {pattern!r}: {exc}; pass gpt2, gpt4 or none"
        ) from None
