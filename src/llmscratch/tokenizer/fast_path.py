"""The fast path: our vocabulary encoded by tiktoken's Rust code, on every core.

A tokenizer that merges by rank (every one we train, GPT-2, any ``.tiktoken``
file) is exactly what tiktoken implements: ``tiktoken.Encoding`` takes the
same three things, the ranks, the pattern and the special tokens, and returns
the same ids as our pure-Python `Tokenizer.encode` (tests compare them on a
large battery). Only the speed differs.

tiktoken releases Python's lock while it encodes, so threads run in
parallel. To keep every core busy whatever the input looks like:

- a long text is cut into pieces of about a million characters at points
  where the cut cannot change the tokens (`patterns.split_at_safe_points`,
  valid for the gpt2 and gpt4 patterns), and the pieces' ids are joined;
- the work is dealt out as one contiguous share per thread, rather than one
  task per text, which would cost more in scheduling than in encoding when
  there are thousands of short texts.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import chain

import tiktoken

from llmscratch.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, split_at_safe_points

_PIECE_CHARS = 1 << 20


def build_encoding(ranks: dict[bytes, int], pattern: str, specials: dict[str, int], name: str):
    """A `tiktoken.Encoding` with our ranks, pattern and special tokens."""
    return tiktoken.Encoding(
        name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )


def encode_many(
    encoding,
    texts: list[str],
    allowed_special: frozenset[str],
    pattern: str,
    num_threads: int | None = None,
) -> list[list[int]]:
    """Encode `texts` with `encoding` on `num_threads` threads (default: all cores).

    The texts must already be checked for disallowed special tokens.
    """
    threads = max(1, num_threads or os.cpu_count() or 1)
    can_cut = pattern in (GPT2_PATTERN, GPT4_PATTERN) and not any(
        " " in token for token in allowed_special
    )
    # Flatten into pieces, remembering how many pieces each text became.
    pieces: list[str] = []
    counts: list[int] = []
    for text in texts:
        parts = list(split_at_safe_points(text, _PIECE_CHARS)) if can_cut else [text]
        pieces.extend(parts)
        counts.append(len(parts))

    def encode_share(share: list[str]) -> list[list[int]]:
        if not allowed_special:
            return [encoding.encode_ordinary(piece) for piece in share]
        return [
            encoding.encode(piece, allowed_special=allowed_special, disallowed_special=())
            for piece in share
        ]

    size = -(-len(pieces) // threads) if pieces else 1  # ceiling division
    shares = [pieces[i : i + size] for i in range(0, len(pieces), size)]
    if len(shares) <= 1:
        encoded = encode_share(pieces)
    else:
        with ThreadPoolExecutor(len(shares)) as pool:
            encoded = list(chain.from_iterable(pool.map(encode_share, shares)))

    results: list[list[int]] = []
    position = 0
    for count in counts:
        if count == 1:
            results.append(encoded[position])
        else:
            results.append(list(chain.from_iterable(encoded[position : position + count])))
        position += count
    return results
