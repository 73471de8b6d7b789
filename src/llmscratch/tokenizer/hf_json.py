"""Hugging Face ``tokenizer.json`` (byte-level BPE): import and export.

A Hugging Face tokenizer file describes a pipeline; for the byte-level BPE
tokenizers of GPT-2, Llama 3 and Qwen it reads::

    "added_tokens":  [{"id": 128000, "content": "<|begin_of_text|>", "special": true}, ...]
    "normalizer":    null, or {"type": "NFC"} (Qwen)
    "pre_tokenizer": {"type": "ByteLevel", "use_regex": true}          GPT-2's regex
                  or {"type": "Sequence", "pretokenizers": [
                        {"type": "Split", "pattern": {"Regex": "..."}, "behavior": "Isolated"},
                        {"type": "ByteLevel", "use_regex": false}]}  (Llama 3, Qwen)
    "model":         {"type": "BPE", "vocab": {"Ġthe": 279, ...},
                      "merges": [["Ġ", "t"], ...], "ignore_merges": true}

Each piece maps onto ours: added tokens are our special tokens (Hugging Face
always reads their text as the token, which is our ``allowed_special="all"``),
the Split regex (or GPT-2's) is our pattern, vocab and merges are written in
GPT-2's byte alphabet (`byte_alphabet.py`), and the merges decide the
encoding in list order: ``merge_rule="merge_list"``. Post-processors (such as
Llama's automatic "<|begin_of_text|>") are not applied: our `encode` adds no
tokens the text does not contain, like ``add_special_tokens=False``.

Exporting goes the other way. Our vocabularies encode by rank (`bpe.py`), so
the merge list written is every split of every token into two tokens, in
order of the token's rank, with ``ignore_merges`` on. Hugging Face then makes
the same choices as our rank rule, except in one contrived case (two
overlapping candidate pairs that spell the same token).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_text, read_json
from llmscratch.tokenizer.byte_alphabet import bytes_to_printable, printable_to_bytes
from llmscratch.tokenizer.parts import TokenizerParts
from llmscratch.tokenizer.patterns import GPT2_PATTERN, pattern_name, resolve_pattern

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}


# ----------------------------------------------------------------- import


def load_hf_tokenizer(path: str | os.PathLike) -> TokenizerParts:
    """A tokenizer's parts from a Hugging Face ``tokenizer.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    return tokenizer_from_hf_dict(read_json(path, "tokenizer file"), str(path))


def tokenizer_from_hf_dict(document: dict, source: str) -> TokenizerParts:
    """Our tokenizer's parts from a parsed Hugging Face file; `source` names it in errors."""
    try:
        model = document["model"]
        if model.get("type") != "BPE":
            _unsupported(source, f"model type {model.get('type')!r} (only BPE)")
        for option in ("byte_fallback", "dropout", "continuing_subword_prefix"):
            if model.get(option):
                _unsupported(source, f"model option {option}={model[option]!r}")
        if model.get("end_of_word_suffix"):
            _unsupported(source, "model option end_of_word_suffix")
        specials = _added_tokens(document.get("added_tokens") or [], source)
        pattern = _pattern(document.get("pre_tokenizer"), source)
        normalization = _normalization(document.get("normalizer"), source)
        special_ids = set(specials.values())
        ranks = {
            printable_to_bytes(token, source): token_id
            for token, token_id in model["vocab"].items()
            if token_id not in special_ids
        }
        merges = [_merge_pair(merge, source) for merge in model["merges"]]
        return TokenizerParts(
            ranks,
            specials,
            pattern,
            merges=merges,
            merge_rule="merge_list",
            ignore_merges=bool(model.get("ignore_merges", False)),
            normalization=normalization,
            name=Path(source).parent.name or None,
        )
    except LLMScratchError as exc:
        message = str(exc)
        raise LLMScratchError(message if source in message else f"{source}: {message}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LLMScratchError(
            f"{source}: not a valid Hugging Face tokenizer.json ({type(exc).__name__}: {exc})"
        ) from None


def _added_tokens(added: list, source: str) -> dict[str, int]:
    specials = {}
    for entry in added:
        for flag in ("lstrip", "rstrip", "single_word"):
            if entry.get(flag):
                _unsupported(source, f"added token {entry['content']!r} with {flag}=true")
        specials[entry["content"]] = entry["id"]
    return specials


def _pattern(pre_tokenizer: dict | None, source: str) -> str:
    """Our pattern for the known byte-level pre-tokenizer shapes."""
    steps = [pre_tokenizer] if pre_tokenizer and pre_tokenizer.get("type") != "Sequence" else []
    if pre_tokenizer and pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers", [])
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        _unsupported(source, "pre_tokenizer other than [Split], ByteLevel(add_prefix_space=false)")
    byte_level_regex = steps[-1].get("use_regex", True)
    if len(steps) == 1:
        return GPT2_PATTERN if byte_level_regex else resolve_pattern("none")
    split = steps[0]
    if (
        len(steps) != 2
        or byte_level_regex
        or split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or "Regex" not in split.get("pattern", {})
    ):
        _unsupported(source, "pre_tokenizer sequence other than Split(Regex, Isolated), ByteLevel")
    return split["pattern"]["Regex"]


def _normalization(normalizer: dict | None, source: str) -> str | None:
    if normalizer is None:
        return None
    kind = normalizer.get("type")
    if kind == "NFC":
        return "NFC"
    if kind == "Sequence" and not normalizer.get("normalizers"):
        return None
    _unsupported(source, f"normalizer {kind!r} (only NFC or none)")


def _merge_pair(merge, source: str) -> tuple[bytes, bytes]:
    left, right = merge.split(" ") if isinstance(merge, str) else merge
    return printable_to_bytes(left, source), printable_to_bytes(right, source)


def _unsupported(source: str, what: str):
    raise LLMScratchError(f"{source}: unsupported Hugging Face tokenizer feature: {what}")


# ----------------------------------------------------------------- export


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every way to write each token as two tokens, in order of the token's rank.

    Under the rank rule a pair (l, r) may merge whenever l + r is a token, at
    priority rank(l + r); this list states exactly that as a merge list.
    """
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def tokenizer_to_hf_dict(tokenizer: TokenizerParts) -> dict:
    """The Hugging Face ``tokenizer.json`` document for a tokenizer's parts."""
    ranks = tokenizer.ranks
    if tokenizer.merge_rule == "rank":
        merges, ignore_merges = merges_from_ranks(ranks), True
    else:
        merges, ignore_merges = tokenizer.merges, tokenizer.ignore_merges
    if tokenizer.pattern == GPT2_PATTERN:
        pre_tokenizer = {**_BYTE_LEVEL, "use_regex": True}
    elif pattern_name(tokenizer.pattern) == "none":
        pre_tokenizer = {**_BYTE_LEVEL, "use_regex": False}
    else:
        split = {
            "type": "Split",
            "pattern": {"Regex": tokenizer.pattern},
            "behavior": "Isolated",
            "invert": False,
        }
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [split, {**_BYTE_LEVEL, "use_regex": False}],
        }
    added = [
        {"id": token_id, "content": token, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for token, token_id in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])
    ]  # fmt: skip
    normalizer = {"type": tokenizer.normalization} if tokenizer.normalization else None
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {**_BYTE_LEVEL, "add_prefix_space": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": ignore_merges,
            "vocab": {
                bytes_to_printable(token): i
                for token, i in sorted(ranks.items(), key=lambda item: item[1])
            },
            "merges": [[bytes_to_printable(a), bytes_to_printable(b)] for a, b in merges],
        },
    }


def save_hf_tokenizer(tokenizer: TokenizerParts, directory: str | os.PathLike) -> Path:
    """Write a tokenizer's parts as ``directory/tokenizer.json`` in Hugging Face's format;
    return its path (`tokenizer.parts` gives a Tokenizer's).

    The folder then loads with ``tokenizers.Tokenizer.from_file`` and
    ``transformers.PreTrainedTokenizerFast(tokenizer_file=...)``.
    """
    path = Path(directory) / "tokenizer.json"
    atomic_write_text(path, json.dumps(tokenizer_to_hf_dict(tokenizer), ensure_ascii=False,
                                       indent=1))
    return path
