"""Training a byte-level BPE vocabulary, fast, in pure Python.

BPE training (Sennrich et al., 2016, "Neural Machine Translation of Rare Words
with Subword Units") starts from the 256 single bytes and repeats one step:
find the adjacent pair of tokens that occurs most often in the corpus, make it
a new token, and rewrite the corpus with it. `reference.py` does exactly that,
rescanning the whole corpus at every step: hours for a large vocabulary. This
module learns the *same merges* (tests check it) in seconds, by never looking
at text a merge does not change:

1. **Count words once.** The pre-tokenizer cuts the text into words, and
   merges never cross a word boundary, so the corpus is just a table of
   distinct words and how often each occurs. Five MB of Shakespeare has 1.5
   million words but only 35 thousand distinct ones.
2. **Count pairs once, then keep the counts up to date.** ``pair_counts``
   holds, for every adjacent pair, its number of occurrences (each word's
   pairs weighted by the word's count), and ``pair_words`` remembers which
   words contain it.
3. **Merge only where the pair is.** Merging (a, b) into c visits only the
   words listed under (a, b). Around each occurrence only the neighbouring
   pairs change: (x, a) becomes (x, c) and (b, y) becomes (c, y). Those
   counts are adjusted; nothing else is touched.
4. **Find the best pair with a heap**, not a scan over all pairs. Counts that
   drop are left stale in the heap and corrected when popped ("lazy
   deletion"); counts that grow (only pairs containing the new token c) are
   pushed after each merge. A popped entry whose stored count equals the
   pair's current count is the true best.

Tie-breaking (deterministic): the pair with the highest count wins; among
equal counts, the pair with the smaller first token id, then the smaller
second token id. Byte tokens have id = byte value, so the first merges break
ties in byte order, and later tokens by creation order.

If a merge ever spells bytes that are already a token (two different splits
of one string, "a"+"bc" and "ab"+"c"), the existing id is reused, so every
byte string has exactly one id and encoding by rank stays well defined.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import NamedTuple

from llmscratch.errors import LLMScratchError
from llmscratch.progress import progress as show_progress
from llmscratch.tokenizer.patterns import (
    compile_pattern,
    resolve_pattern,
    split_at_safe_points,
)
from llmscratch.tokenizer.specials import check_special_tokens, special_token_regex
from llmscratch.tokenizer.tokenizer import Tokenizer, valid_utf8_text

Pair = tuple[int, int]


def count_words(
    texts: Iterable[str],
    pattern: str,
    special_tokens: Iterable[str] = (),
    progress: bool = False,
) -> Counter[str]:
    """Count the distinct pre-tokenized words in `texts`, streaming.

    Each text is a separate document: it is cut at special tokens (whose text
    is dropped, as it never takes part in merges), then split by `pattern`.
    Long texts are split in chunks of about a million characters at points
    where that cannot change the words (see `split_at_safe_points`), so memory
    holds one chunk's word list at a time, plus the table of distinct words.
    """
    splitter = compile_pattern(pattern)
    specials = special_token_regex(special_tokens)
    can_chunk = pattern != resolve_pattern("none")
    counts: Counter[str] = Counter()
    bar = _progress_bar(progress, desc="counting words", unit="char", unit_scale=True)
    for text in texts:
        if not isinstance(text, str):
            raise LLMScratchError(
                f"train_bpe expects an iterable of str documents, got {type(text).__name__}; "
                "pass texts=[...] or a generator of strings"
            )
        text = valid_utf8_text(text)
        segments = specials.split(text) if specials is not None else [text]
        for segment in segments:
            chunks = split_at_safe_points(segment) if can_chunk else [segment]
            for chunk in chunks:
                counts.update(splitter.findall(chunk))
        bar.update(len(text))
    bar.close()
    return counts


class LearnedMerges(NamedTuple):
    tokens: list[bytes]  # tokens[i]: the bytes of token id i; ids 0-255 are the bytes
    merges: list[Pair]  # merges[k]: the k-th merged pair of ids
    corpus_tokens: int  # length of the training corpus in tokens, after all merges


def learn_merges(
    word_counts: dict[bytes, int], num_tokens: int, progress: bool = False
) -> LearnedMerges:
    """Learn merges until the vocabulary holds `num_tokens` tokens.

    Stops early when no pair is left to merge (every word is one token).
    """
    tokens = [bytes([b]) for b in range(256)]
    token_ids = {token: i for i, token in enumerate(tokens)}
    merges: list[Pair] = []

    # Words as lists of token ids; one-byte words have no pairs and never change.
    words = [list(word) for word in word_counts if len(word) > 1]
    counts = [count for word, count in word_counts.items() if len(word) > 1]

    pair_counts: defaultdict[Pair, int] = defaultdict(int)
    pair_words: defaultdict[Pair, set[int]] = defaultdict(set)
    for index, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += count
            pair_words[pair].add(index)

    # Max-heap via negated counts; the pair itself breaks ties (smaller first).
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    bar = _progress_bar(progress, total=max(0, num_tokens - len(tokens)), desc="BPE merges",
                        unit="merge")
    while len(tokens) < num_tokens:
        pair = _pop_most_frequent(heap, pair_counts)
        if pair is None:
            break  # every word is a single token: nothing left to merge
        merged = tokens[pair[0]] + tokens[pair[1]]
        new_id = token_ids.get(merged)
        if new_id is None:
            new_id = len(tokens)
            tokens.append(merged)
            token_ids[merged] = new_id
            bar.update(1)
        merges.append(pair)
        grown = _merge_pair(pair, new_id, words, counts, pair_counts, pair_words)
        for grown_pair in grown:
            heapq.heappush(heap, (-pair_counts[grown_pair], grown_pair))
    bar.close()
    one_byte_words = sum(count for word, count in word_counts.items() if len(word) == 1)
    corpus_tokens = one_byte_words + sum(map(operator.mul, map(len, words), counts))
    return LearnedMerges(tokens, merges, corpus_tokens)


def _pop_most_frequent(heap: list, pair_counts: dict[Pair, int]) -> Pair | None:
    """Pop the pair with the highest current count (ties: smallest pair)."""
    while heap:
        negative_count, pair = heap[0]
        count = pair_counts.get(pair, 0)
        if count == -negative_count:
            heapq.heappop(heap)
            return pair
        if count > 0:  # stale: the count dropped since the push; re-file it
            heapq.heapreplace(heap, (-count, pair))
        else:
            heapq.heappop(heap)
    return None


def _merge_pair(
    pair: Pair,
    new_id: int,
    words: list[list[int]],
    counts: list[int],
    pair_counts: defaultdict[Pair, int],
    pair_words: defaultdict[Pair, set[int]],
) -> set[Pair]:
    """Replace `pair` by `new_id` in every word that holds it; fix the counts.

    For an occurrence ``x a b y`` becoming ``x c y`` the pair counts change by
    (x, a) -1, (x, c) +1, (b, y) -1, (c, y) +1, times the word's count. When
    two occurrences touch (``a b a b`` -> ``c c``) the pair between them,
    (b, a), must be removed once, not twice: the right-hand update is skipped
    when another occurrence starts right after, and the left-hand update of
    that occurrence then turns (b, a) into (c, c).
    Returns the pairs whose count grew, for the heap.
    """
    a, b = pair
    grown: set[Pair] = set()
    for index in pair_words.pop(pair, ()):
        word = words[index]
        if a not in word:
            continue  # listed under a pair the word lost to an earlier merge
        count = counts[index]
        n = len(word)
        new_word: list[int] = []
        i = 0
        while i < n:
            if word[i] == a and i + 1 < n and word[i + 1] == b:
                if i > 0:
                    pair_counts[word[i - 1], a] -= count
                    left_pair = (new_word[-1], new_id)
                    pair_counts[left_pair] += count
                    pair_words[left_pair].add(index)
                    grown.add(left_pair)
                if i + 2 < n and not (i + 3 < n and word[i + 2] == a and word[i + 3] == b):
                    pair_counts[b, word[i + 2]] -= count
                    right_pair = (new_id, word[i + 2])
                    pair_counts[right_pair] += count
                    pair_words[right_pair].add(index)
                    grown.add(right_pair)
                new_word.append(new_id)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        words[index] = new_word
    pair_counts.pop(pair, None)
    grown.discard(pair)
    return grown


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str = "gpt2",
    special_tokens: Iterable[str] = ("<|endoftext|>",),
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts` (an iterable of documents).

    `vocab_size` counts everything: the 256 bytes, the learned merges and the
    special tokens, which take the last ids (so with the default, the id of
    "<|endoftext|>" is vocab_size - 1). `pattern` names the pre-tokenizer:
    "gpt2", "gpt4" or "none". The input is streamed: `texts` may be a
    generator over files. With `progress`, bars show counting and merging.
    Timings and corpus figures are stored in ``tokenizer.train_stats``.
    """
    specials = check_special_tokens(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise LLMScratchError(
            f"vocab size {vocab_size!r} is too small: it must be at least 256 (one per byte) "
            f"+ {len(specials)} special token(s) = {256 + len(specials)}"
        )
    regex_pattern = resolve_pattern(pattern)
    started = time.perf_counter()
    word_counts = count_words(texts, regex_pattern, specials, progress)
    word_bytes: Counter[bytes] = Counter()
    for word, count in word_counts.items():
        word_bytes[word.encode("utf-8")] += count
    del word_counts
    counted = time.perf_counter()
    learned = learn_merges(word_bytes, vocab_size - len(specials), progress)
    finished = time.perf_counter()

    tokens = learned.tokens
    ranks = {token: i for i, token in enumerate(tokens)}
    special_ids = {token: len(tokens) + i for i, token in enumerate(specials)}
    merges = [(tokens[left], tokens[right]) for left, right in learned.merges]
    tokenizer = Tokenizer(ranks, special_ids, regex_pattern, merges=merges)
    tokenizer.train_stats = {
        "seconds": finished - started,
        "count_seconds": counted - started,
        "merge_seconds": finished - counted,
        "bytes": sum(len(word) * count for word, count in word_bytes.items()),
        "words": sum(word_bytes.values()),
        "distinct_words": len(word_bytes),
        "tokens": learned.corpus_tokens,
    }
    return tokenizer


def _progress_bar(enabled: bool, **kwargs):
    """A progress bar (llmscratch/progress.py), shown only when `enabled`."""
    return show_progress(disable=not enabled, **kwargs)
