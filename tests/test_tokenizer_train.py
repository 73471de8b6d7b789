"""The fast trainer against the textbook one, and streaming input against whole text."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmscratch.data.text_files import iter_files, iter_text_blocks
from llmscratch.tokenizer import train_bpe
from llmscratch.tokenizer.patterns import GPT2_PATTERN
from llmscratch.tokenizer.reference import merge_word, reference_merges, train_bpe_reference
from llmscratch.tokenizer.train import count_words, learn_merges
from tests.test_tokenizer import shakespeare_texts

# Few distinct characters make many ties and overlapping pairs ("aaaa").
documents = st.lists(
    st.text(alphabet=st.sampled_from(list("aab b c\n\t'1é😀")), max_size=60), max_size=6
)


@settings(max_examples=300, deadline=None)
@given(
    documents,
    st.integers(min_value=257, max_value=330),
    st.sampled_from(["gpt2", "gpt4", "none"]),
)
def test_fast_trainer_equals_reference_on_random_corpora(docs, vocab_size, pattern):
    fast = train_bpe(docs, vocab_size, pattern, special_tokens=("<|endoftext|>",))
    slow = train_bpe_reference(docs, vocab_size, pattern, special_tokens=("<|endoftext|>",))
    assert fast.merges == slow.merges
    assert fast.mergeable_ranks == slow.mergeable_ranks
    assert fast.special_tokens == slow.special_tokens


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=12).map(lambda b: bytes(x % 4 + 97 for x in b)),
        st.integers(min_value=1, max_value=9),
        max_size=12,
    ),
    st.integers(min_value=256, max_value=300),
)
def test_learn_merges_equals_reference_on_word_tables(word_counts, num_tokens):
    learned = learn_merges(word_counts, num_tokens)
    tokens, merges = reference_merges(word_counts, num_tokens)
    assert learned.tokens == tokens
    assert learned.merges == merges
    # The corpus length after merging is the sum over words of their final lengths.
    final = {word: tuple(word) for word in word_counts}
    for pair, token in zip(merges, tokens[256:], strict=False):
        final = {w: merge_word(seq, pair, tokens.index(token)) for w, seq in final.items()}
    assert learned.corpus_tokens == sum(len(final[w]) * c for w, c in word_counts.items())


def test_fast_equals_reference_on_shakespeare():
    text = shakespeare_texts()[5][:60_000]
    fast = train_bpe([text], 420)
    slow = train_bpe_reference([text], 420)
    assert fast.merges == slow.merges and len(fast.merges) == 163


def test_training_stops_when_nothing_is_left_to_merge():
    tok = train_bpe(["ab ab"], vocab_size=1000, special_tokens=("<|endoftext|>",))
    assert tok.merges == [(b"a", b"b"), (b" ", b"ab")]
    assert tok.vocab_size == 259 and tok.eot_id == 258


def test_train_stats_describe_the_corpus(monkeypatch):
    import llmscratch.tokenizer.train as train_module

    ticks = iter([10.0, 11.5, 14.0])  # start, words counted, merges learned

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return next(ticks)

    monkeypatch.setattr(train_module, "time", Clock)
    tok = train_bpe(["to be or not to be"], vocab_size=300)
    stats = tok.train_stats
    assert stats["bytes"] == len("to be or not to be")
    assert stats["words"] == 6 and stats["distinct_words"] == 5
    assert stats["tokens"] == len(tok.encode("to be or not to be"))
    assert (stats["seconds"], stats["count_seconds"], stats["merge_seconds"]) == (4, 1.5, 2.5)


def test_streamed_file_blocks_count_like_the_whole_file(tmp_path):
    text = "".join(shakespeare_texts()[:2]) + "  \n\n end \r\n x "
    path = tmp_path / "plays.txt"
    path.write_bytes(text.encode("utf-8"))
    blocks = list(iter_text_blocks(path, block_bytes=1000))
    assert len(blocks) > 100 and "".join(blocks) == text
    assert count_words(blocks, GPT2_PATTERN) == count_words([text], GPT2_PATTERN)


def test_streamed_blocks_keep_multibyte_characters_whole(tmp_path):
    text = "é😀中 " * 500
    path = tmp_path / "utf8.txt"
    path.write_text(text, encoding="utf-8")
    assert "".join(iter_text_blocks(path, block_bytes=7)) == text
    assert list(iter_text_blocks(path, whole=True, block_bytes=7)) == [text]


def test_training_from_files_equals_training_from_strings(tmp_path):
    plays = shakespeare_texts()[:3]
    paths = []
    for i, play in enumerate(plays):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text(play, encoding="utf-8")
    from_files = train_bpe(iter_files(paths), 600, pattern="gpt4")
    from_strings = train_bpe(plays, 600, pattern="gpt4")
    assert from_files.merges == from_strings.merges


def test_count_words_rejects_non_strings():
    from llmscratch.errors import LLMScratchError

    with pytest.raises(LLMScratchError, match="iterable of str"):
        count_words([b"bytes"], GPT2_PATTERN)


def test_count_words_drops_special_token_text():
    counts = count_words(["a<|endoftext|>b a"], GPT2_PATTERN, ["<|endoftext|>"])
    assert counts == Counter({"a": 1, "b": 1, " a": 1})
