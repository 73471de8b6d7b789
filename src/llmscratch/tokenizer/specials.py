"""Special tokens: strings like "<|endoftext|>" that get one reserved id.

A special token is never produced by BPE merges and is never merged with its
neighbours. Its text is only read as the special token when the caller says
so, following tiktoken: a web page that happens to contain "<|endoftext|>"
must not be able to end a document early. `encode` therefore

- raises an error when the text contains a special token that is not
  explicitly allowed (the default: ``disallowed_special="all"``),
- encodes allowed special tokens (``allowed_special={...}`` or ``"all"``) as
  their reserved id,
- encodes them as ordinary text when checking is turned off
  (``disallowed_special="none"``).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable

import regex

from llmscratch.errors import LLMScratchError

ENDOFTEXT = "<|endoftext|>"


def check_special_tokens(tokens: Iterable[str]) -> list[str]:
    """Validate a list of special tokens: non-empty strings, each listed once."""
    if isinstance(tokens, str):
        tokens = [tokens]  # a lone string, not its characters
    checked: list[str] = []
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise LLMScratchError(
                f"special token {token!r} is not a non-empty string; use e.g. '<|endoftext|>'"
            )
        if token in checked:
            raise LLMScratchError(
                f"special token {token!r} is listed twice; each special token needs one id"
            )
        checked.append(token)
    return checked


def special_token_regex(tokens: Iterable[str], capture: bool = False) -> regex.Pattern | None:
    """A regex matching any of `tokens` (longest first), or None if there are none.

    With `capture`, ``pattern.split(text)`` keeps the matched tokens at the odd
    positions of its result; without, they are dropped.
    """
    ordered = tuple(sorted(set(tokens), key=lambda token: (-len(token), token)))
    return _compile_alternatives(ordered, capture) if ordered else None


@functools.lru_cache(maxsize=64)
def _compile_alternatives(tokens: tuple[str, ...], capture: bool) -> regex.Pattern:
    alternatives = "|".join(regex.escape(token) for token in tokens)
    return regex.compile(f"({alternatives})" if capture else f"(?:{alternatives})")


def resolve_special_sets(
    all_specials: Collection[str],
    allowed_special: str | Collection[str],
    disallowed_special: str | Collection[str],
) -> tuple[frozenset[str], frozenset[str]]:
    """Turn the ``"all"`` / ``"none"`` / collection arguments into two sets.

    Returns (allowed, disallowed). An allowed token that the tokenizer does
    not have is an error, as in tiktoken: it is almost always a typo.
    """
    every = frozenset(all_specials)
    allowed = _as_set(allowed_special, every, "allowed_special")
    unknown = sorted(allowed - every)
    if unknown:
        raise LLMScratchError(
            f"unknown special token {unknown[0]!r} in allowed_special; "
            f"this tokenizer has: {', '.join(sorted(every)) or 'none'}"
        )
    if disallowed_special == "all":
        disallowed = every - allowed
    else:
        disallowed = _as_set(disallowed_special, every, "disallowed_special")
    return allowed, disallowed


def raise_if_disallowed(texts: str | Iterable[str], disallowed: frozenset[str]) -> None:
    """Raise if a text (or any of several) contains one of the `disallowed` tokens."""
    finder = special_token_regex(disallowed)
    if finder is None:
        return
    for text in [texts] if isinstance(texts, str) else texts:
        found = finder.search(text)
        if found:
            raise LLMScratchError(
                f"text contains the special token {found.group()!r} at character "
                f"{found.start()}; pass allowed_special={{{found.group()!r}}} to encode it as "
                "one token, or disallowed_special='none' to encode it as plain text"
            )


def _as_set(value: str | Collection[str], every: frozenset[str], name: str) -> frozenset[str]:
    if value == "all":
        return every
    if value == "none":
        return frozenset()
    if isinstance(value, str):
        raise LLMScratchError(
            f"{name}={value!r} is not valid; pass 'all', 'none' or a set of special tokens"
        )
    return frozenset(value)
