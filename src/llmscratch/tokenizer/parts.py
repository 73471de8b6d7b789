"""What a tokenizer is made of, as plain data, checked once whatever file it came from.

`TokenizerParts` holds what every tokenizer file stores: each token's bytes and
id (the ranks), the special tokens and their ids, the pre-tokenizer regex, the
merges, and how they decide the encoding. The file formats read a file into
parts and write parts into a file (storage.py, hf_json.py, openai_files.py);
`Tokenizer` builds its encoder from parts (`Tokenizer.from_parts`) and gives
them back (`tokenizer.parts`). So the formats need this module, not
tokenizer.py, and tokenizer.py can use the formats for `save`, `load` and
`gpt2`: imports run one way.

The checks are those any file can fail, since a model needs an embedding row
for every id up to the largest:

- every id is a whole number >= 0, and no two tokens share one;
- all 256 single bytes are tokens (a byte-level BPE must encode any text);
- the ids leave few unused: the largest is below the number of tokens plus
  MAX_UNUSED_IDS. Real vocabularies leave a few (tiktoken's cl100k_base skips
  16 ids among its special tokens); an id of 10^15 is a broken file, not a
  vocabulary of a million billion rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmscratch.errors import LLMScratchError

MAX_UNUSED_IDS = 1024
MERGE_RULES = ("rank", "merge_list")


@dataclass
class TokenizerParts:
    """A tokenizer's contents (see `Tokenizer` for what each does); checked when made.

    ranks: each ordinary token's bytes -> its id. special_tokens: text -> id.
    pattern: the pre-tokenizer regex. merges: the learned merges, in order, or None.
    merge_rule: "rank" (the ranks decide, as tiktoken) or "merge_list" (the merges
    decide, as Hugging Face). ignore_merges: a piece that is a token stays whole.
    normalization: "NFC" or None. name: a label, such as "gpt2".
    """

    ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    pattern: str
    merges: list[tuple[bytes, bytes]] | None = None
    merge_rule: str = "rank"
    ignore_merges: bool = True
    normalization: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str):
            raise LLMScratchError(f"the pre-tokenizer pattern must be a string, got "
                                  f"{self.pattern!r}")
        check_ids(self.ranks, self.special_tokens)
        if self.merge_rule not in MERGE_RULES:
            raise LLMScratchError(f"unknown merge rule {self.merge_rule!r}; use 'rank' or "
                                  "'merge_list'")
        if self.merge_rule == "merge_list" and self.merges is None:
            raise LLMScratchError("merge_rule='merge_list' needs the list of merges")
        if self.normalization not in (None, "NFC"):
            raise LLMScratchError(f"unsupported normalization {self.normalization!r}; use "
                                  "'NFC' or none")

    @property
    def vocab_size(self) -> int:
        """The ids a model needs: the largest id + 1, special tokens included."""
        return max([*self.ranks.values(), *self.special_tokens.values()]) + 1


def check_ids(ranks: dict[bytes, int], special_tokens: dict[str, int]) -> None:
    """The checks of the module docstring; each failure names the token."""
    for token, token_id in [*ranks.items(), *special_tokens.items()]:
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise LLMScratchError(f"token {token!r} has the id {token_id!r}; ids are whole "
                                  "numbers from 0")
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise LLMScratchError(f"special token {token!r} is not a non-empty string")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise LLMScratchError(
            f"vocabulary has no token for byte {missing[0]} ({len(missing)} bytes missing); "
            "a byte-level BPE vocabulary must hold all 256 single bytes"
        )
    owner: dict[int, bytes | str] = {}
    for token, token_id in [*ranks.items(), *special_tokens.items()]:
        if token_id in owner:
            raise LLMScratchError(f"tokens {owner[token_id]!r} and {token!r} have the same id "
                                  f"{token_id}; every id must be unique")
        owner[token_id] = token
    largest = max(owner)
    if largest >= len(owner) + MAX_UNUSED_IDS:
        raise LLMScratchError(
            f"token {owner[largest]!r} has the id {largest:,}, but there are only "
            f"{len(owner):,} tokens: a model would need {largest + 1:,} embedding rows, "
            f"{largest + 1 - len(owner):,} of them unused (at most {MAX_UNUSED_IDS:,} may be)"
        )
