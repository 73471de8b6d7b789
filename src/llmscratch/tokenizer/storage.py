"""Saving and loading a tokenizer as one readable JSON file, ``tokenizer.json``.

The file (format "llmscratch-bpe", version 1) is meant to be read by people
as well as programs. Tokens are written in GPT-2's printable byte alphabet
(`byte_alphabet.py`: " the" is "Ġthe", a newline is "Ċ")::

    {
      "format": "llmscratch-bpe",
      "version": 1,
      "name": null,                          # a label, e.g. "gpt2"
      "pattern_name": "gpt2",                # "gpt2", "gpt4", "none" or null
      "pattern": "'(?:[sdmt]|ll|ve|re)| ?...",  # the pre-tokenizer regex itself
      "normalization": null,                 # or "NFC"
      "merge_rule": "rank",                  # or "merge_list" (see bpe.py)
      "ignore_merges": true,                 # a piece that is a token stays whole
      "special_tokens": {"<|endoftext|>": 4095},
      "vocab": {"!": 33, ..., "Ġthe": 262},  # token -> id, by id
      "merges": [["Ġ", "t"], ["h", "e"], ...]  # learned merges in order, or null
    }

The vocabulary alone defines encoding under the rank rule; the merges are the
training record (and the encoding rule for tokenizers imported from Hugging
Face). The file is written to a temporary name and renamed, so an interrupted
save never leaves half a file behind.

`load_tokenizer` also accepts a Hugging Face ``tokenizer.json`` (recognised by
its "model" key) and imports it (`hf_json.py`). Both directions work on
`TokenizerParts` (parts.py); `Tokenizer.save` and `Tokenizer.load` call them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_text, read_json
from llmscratch.tokenizer.byte_alphabet import bytes_to_printable, printable_to_bytes
from llmscratch.tokenizer.hf_json import tokenizer_from_hf_dict
from llmscratch.tokenizer.parts import TokenizerParts
from llmscratch.tokenizer.patterns import pattern_name

FORMAT = "llmscratch-bpe"
VERSION = 1
FILE_NAME = "tokenizer.json"


def tokenizer_to_dict(tokenizer: TokenizerParts) -> dict:
    """The JSON document for a tokenizer's parts (see the module docstring)."""
    ranks = tokenizer.ranks
    vocab = {bytes_to_printable(token): i for token, i in sorted(ranks.items(), key=_by_id)}
    merges = None
    if tokenizer.merges is not None:
        merges = [[bytes_to_printable(a), bytes_to_printable(b)] for a, b in tokenizer.merges]
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": tokenizer.name,
        "pattern_name": pattern_name(tokenizer.pattern),
        "pattern": tokenizer.pattern,
        "normalization": tokenizer.normalization,
        "merge_rule": tokenizer.merge_rule,
        "ignore_merges": tokenizer.ignore_merges,
        "special_tokens": tokenizer.special_tokens,
        "vocab": vocab,
        "merges": merges,
    }


def tokenizer_from_dict(document: dict, source: str) -> TokenizerParts:
    """A tokenizer's parts from a parsed file; `source` names the file in errors."""
    if document.get("format") != FORMAT:
        raise LLMScratchError(f"{source}: not an llmscratch tokenizer file (no format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise LLMScratchError(
            f"{source}: tokenizer file version {document.get('version')!r} is not supported "
            f"(this llmscratch reads version {VERSION}); re-create it with this version"
        )
    try:
        ranks = {
            printable_to_bytes(token, source): i for token, i in document["vocab"].items()
        }
        merges = document.get("merges")
        if merges is not None:
            merges = [
                (printable_to_bytes(a, source), printable_to_bytes(b, source)) for a, b in merges
            ]
        specials = {str(token): i for token, i in document["special_tokens"].items()}
        return TokenizerParts(
            ranks,
            specials,
            str(document["pattern"]),
            merges=merges,
            merge_rule=document.get("merge_rule", "rank"),
            ignore_merges=bool(document.get("ignore_merges", True)),
            normalization=document.get("normalization"),
            name=document.get("name"),
        )
    except LLMScratchError as exc:
        message = str(exc)
        if message.startswith(source):
            raise
        raise LLMScratchError(f"{source}: {message}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LLMScratchError(
            f"{source}: tokenizer file is corrupt ({type(exc).__name__}: {exc}); "
            "re-create it with `llmscratch tokenizer train`"
        ) from None


def save_tokenizer(tokenizer: TokenizerParts, directory: str | os.PathLike) -> Path:
    """Write a tokenizer's parts to ``directory/tokenizer.json`` atomically; return the path."""
    directory = Path(directory)
    if directory.suffix == ".json":
        raise LLMScratchError(
            f"save() takes a directory, got the file name {str(directory)!r}; "
            "pass its folder (the file is always named tokenizer.json)"
        )
    path = directory / FILE_NAME
    atomic_write_text(path, json.dumps(tokenizer_to_dict(tokenizer), ensure_ascii=False, indent=1))
    return path


def load_tokenizer(path: str | os.PathLike) -> TokenizerParts:
    """A tokenizer's parts from a directory holding ``tokenizer.json``, or from the file."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    source = str(path)
    if not path.is_file():
        raise LLMScratchError(
            f"tokenizer file {source!r} does not exist; train one with "
            "`llmscratch tokenizer train` or use the built-in name gpt2"
        )
    document = read_json(path, "tokenizer file")
    if "model" in document and "format" not in document:
        return tokenizer_from_hf_dict(document, source)
    return tokenizer_from_dict(document, source)


def _by_id(item: tuple[bytes, int]) -> int:
    return item[1]
