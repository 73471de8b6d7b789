"""The textbook BPE trainer: short, obviously right, and slow. For reading and for tests.

This is the loop from the BPE paper (Sennrich et al., 2016, Algorithm 1),
applied to bytes as in GPT-2:

    repeat until the vocabulary is full:
        count every adjacent pair of tokens in the corpus
        take the most frequent pair (a, b)
        give a + b a new id, and replace every (a, b) in the corpus with it

Each step reads the whole corpus, so the cost is (number of merges) x
(corpus size): fine for a few kB, hours for a few MB. `train.learn_merges`
produces exactly the same merges (the tests compare them on random corpora)
while touching only the words each merge changes.

The details below must match `train.py` exactly:

- words are counted once, like there (`train.count_words`); merges never
  cross a word boundary;
- ties go to the pair with the smaller first id, then the smaller second id;
- a word is rewritten left to right, so "a a a" merged on (a, a) is "aa a";
- a merge whose bytes are already a token reuses that token's id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer.patterns import resolve_pattern
from llmscratch.tokenizer.specials import check_special_tokens
from llmscratch.tokenizer.tokenizer import Tokenizer
from llmscratch.tokenizer.train import count_words


def reference_merges(
    word_counts: dict[bytes, int], num_tokens: int
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Learn merges by the textbook loop; same contract as `train.learn_merges`."""
    tokens = [bytes([b]) for b in range(256)]
    merges: list[tuple[int, int]] = []
    corpus = {tuple(word): count for word, count in word_counts.items()}
    while len(tokens) < num_tokens:
        pair_counts: Counter[tuple[int, int]] = Counter()
        for word, count in corpus.items():
            for pair in zip(word, word[1:], strict=False):
                pair_counts[pair] += count
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merged = tokens[best[0]] + tokens[best[1]]
        if merged in tokens:
            new_id = tokens.index(merged)
        else:
            new_id = len(tokens)
            tokens.append(merged)
        merges.append(best)
        corpus = {merge_word(word, best, new_id): count for word, count in corpus.items()}
    return tokens, merges


def merge_word(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    """Replace each occurrence of `pair` in `word`, left to right, by `new_id`."""
    merged = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def train_bpe_reference(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt2",
    special_tokens: Iterable[str] = ("<|endoftext|>",),
) -> Tokenizer:
    """`train.train_bpe` with the textbook merge loop (small corpora only)."""
    specials = check_special_tokens(special_tokens)
    if vocab_size < 256 + len(specials):
        raise LLMScratchError(f"vocab size {vocab_size} is below 256 + {len(specials)}")
    regex_pattern = resolve_pattern(pattern)
    words = count_words(texts, regex_pattern, specials)
    word_counts = Counter()
    for word, count in words.items():
        word_counts[word.encode("utf-8")] += count
    tokens, merges = reference_merges(word_counts, vocab_size - len(specials))
    ranks = {token: i for i, token in enumerate(tokens)}
    special_ids = {token: len(tokens) + i for i, token in enumerate(specials)}
    merged_bytes = [(tokens[a], tokens[b]) for a, b in merges]
    return Tokenizer(ranks, special_ids, regex_pattern, merges=merged_bytes)
