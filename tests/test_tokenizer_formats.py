"""Other tokenizer formats: Hugging Face tokenizer.json and .tiktoken, both directions.

The Hugging Face files here are built offline with the `tokenizers` library
itself, in the shapes real model folders use (GPT-2: ByteLevel regex; Llama 3:
Split + ByteLevel, ignore_merges, chat-control tokens, a BOS post-processor;
Qwen: NFC + Split + ByteLevel, merges in list order). Ids are compared with
`tokenizers` on the shared battery.
"""

from __future__ import annotations

import json
import re

import pytest
import tokenizers  # the references: never skipped
import transformers
from tiktoken.load import load_tiktoken_bpe

from llmscratch.errors import LLMScratchError
from llmscratch.tokenizer import Tokenizer, train_bpe
from llmscratch.tokenizer.bpe import rank_by_token, simple_split_piece, split_piece
from llmscratch.tokenizer.hf_json import merges_from_ranks, save_hf_tokenizer
from llmscratch.tokenizer.openai_files import gpt2_files, load_tiktoken_file, save_tiktoken_file
from tests.test_tokenizer import BATTERY, shakespeare_texts

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|reserved_special_token_0|>",
]  # fmt: skip
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = [
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nCafe\u0301?<|im_end|>",
]


def hf_battery() -> list[str]:
    """The battery without lone surrogates (Rust strings cannot hold them) and specials."""
    texts = [t for t in BATTERY if not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]
    texts = [t for t in texts if "<|" not in t]
    return texts + [shakespeare_texts()[6][:40_000]]


@pytest.fixture(scope="module")
def shakespeare_vocab() -> Tokenizer:
    """A 2,000-token vocabulary, the stand-in for a real model's."""
    return train_bpe(shakespeare_texts()[:2], 2000, pattern="gpt4", special_tokens=())


def assert_same_ids(ours: Tokenizer, theirs, texts: list[str]) -> None:
    for text in texts:
        expected = theirs.encode(text, add_special_tokens=False).ids
        assert ours.encode(text, allowed_special="all") == expected, text[:60]
        assert ours.decode(expected) == theirs.decode(expected, skip_special_tokens=False)


def build_hf_file(folder, vocab: dict, merges: list, pattern: str | None, specials: list[str],
                  ignore_merges: bool, nfc: bool = False, bos: str | None = None):  # fmt: skip
    """Write ``folder/tokenizer.json`` with the `tokenizers` library."""
    from tokenizers import (
        AddedToken,
        Regex,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    if pattern is None:
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    if nfc:
        hf.normalizer = normalizers.NFC()
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos is not None:
        bos_id = hf.token_to_id(bos)
        hf.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, bos_id)]
        )
    folder.mkdir(parents=True, exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


def hf_vocab_and_merges(tok: Tokenizer, merges: list[tuple[bytes, bytes]]):
    from llmscratch.tokenizer.byte_alphabet import bytes_to_printable as printable

    vocab = {printable(b): i for b, i in tok.mergeable_ranks.items()}
    return vocab, [(printable(a), printable(b)) for a, b in merges]


# ------------------------------------------------------------ import from HF


def test_gpt2_style_folder_imports_with_identical_ids(tmp_path):
    encoder_json, vocab_bpe = gpt2_files()
    from tokenizers import AddedToken, decoders, models, pre_tokenizers

    hf = tokenizers.Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    (tmp_path / "gpt2").mkdir()
    hf.save(str(tmp_path / "gpt2" / "tokenizer.json"))

    ours = Tokenizer.load(tmp_path / "gpt2")
    assert ours.merge_rule == "merge_list" and ours.vocab_size == 50257
    texts = hf_battery() + ["one<|endoftext|>two"]
    assert_same_ids(ours, hf, texts)
    gpt2 = Tokenizer.gpt2()  # tiktoken's rule on the same files: same ids here
    for text in texts:
        assert ours.encode(text, allowed_special="all") == gpt2.encode(text, allowed_special="all")


def test_llama3_style_folder_imports_with_identical_ids(tmp_path, shakespeare_vocab):
    vocab, merges = hf_vocab_and_merges(
        shakespeare_vocab, merges_from_ranks(shakespeare_vocab.mergeable_ranks)
    )
    hf = build_hf_file(tmp_path / "llama", vocab, merges, LLAMA3_PATTERN, LLAMA3_SPECIALS,
                       ignore_merges=True, bos="<|begin_of_text|>")  # fmt: skip
    ours = Tokenizer.load(tmp_path / "llama" / "tokenizer.json")
    assert ours.pattern == LLAMA3_PATTERN and ours.ignore_merges
    assert ours.special_tokens["<|eot_id|>"] == 2004
    assert_same_ids(ours, hf, hf_battery() + CHAT[:1])
    # The post-processor's BOS is not added by our encode (add_special_tokens=False).
    assert hf.encode("Hi").ids[0] == 2000 and ours.encode("Hi")[0] != 2000


def test_qwen_style_folder_imports_with_identical_ids(tmp_path, shakespeare_vocab):
    vocab, merges = hf_vocab_and_merges(shakespeare_vocab, shakespeare_vocab.merges)
    hf = build_hf_file(tmp_path / "qwen", vocab, merges, QWEN2_PATTERN, QWEN_SPECIALS,
                       ignore_merges=False, nfc=True)  # fmt: skip
    ours = Tokenizer.load(tmp_path / "qwen")
    assert ours.normalization == "NFC" and not ours.ignore_merges
    assert_same_ids(ours, hf, hf_battery() + CHAT[1:])
    # No tiktoken equivalent for a merge-list tokenizer: encode_batch uses the pure path.
    assert not ours.has_fast_path
    assert ours.encode_batch(CHAT[1:], allowed_special="all") == [
        ours.encode(CHAT[1], allowed_special="all")
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"].update(type="WordPiece"), "model type 'WordPiece'"),
        (lambda d: d.update(pre_tokenizer={"type": "Metaspace"}), "pre_tokenizer"),
        (lambda d: d.update(normalizer={"type": "Lowercase"}), "normalizer 'Lowercase'"),
        (lambda d: d["added_tokens"][0].update(lstrip=True), "lstrip"),
        (lambda d: d["model"].pop("vocab"), "not a valid Hugging Face"),
    ],
)
def test_unsupported_hf_files_are_one_line_errors(tmp_path, edit, message):
    path = save_hf_tokenizer(train_bpe(["abc abd"], 260).parts, tmp_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(LLMScratchError, match=message) as info:
        Tokenizer.load(path)
    assert str(path) in str(info.value)


def first_vocab_entry(document: dict) -> str:
    return next(iter(document["model"]["vocab"]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["added_tokens"][0].update(id=10**15),
         "'<|endoftext|>' has the id 1,000,000,000,000,000, but there are only 260 tokens"),
        (lambda d: d["added_tokens"][0].update(id=-1), "has the id -1; ids are whole numbers"),
        (lambda d: d["added_tokens"][0].update(id="259"), "has the id '259'; ids are whole"),
        (lambda d: d["added_tokens"][0].update(id=True), "has the id True; ids are whole"),
        (lambda d: d["added_tokens"].append({"id": 259, "content": "<|pad|>"}),
         "tokens '<|endoftext|>' and '<|pad|>' have the same id 259"),
        (lambda d: d["model"]["vocab"].update({first_vocab_entry(d): 10**6}),
         "has the id 1,000,000, but there are only 260 tokens"),
    ],
)
def test_tokenizer_ids_are_checked_in_every_format(tmp_path, edit, message):
    """Ids that no model could hold an embedding for, in a Hugging Face file and in ours."""
    tok = train_bpe(["abc abd"], 260)
    hf_path = save_hf_tokenizer(tok.parts, tmp_path / "hf")
    document = json.loads(hf_path.read_text(encoding="utf-8"))
    edit(document)
    hf_path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(LLMScratchError, match=re.escape(message)):
        Tokenizer.load(hf_path)
    ours = Tokenizer.load(tok.save(tmp_path / "ours"))  # the same ids in our format
    assert ours.encode("abc abd") == tok.encode("abc abd")
    our_path = tmp_path / "ours" / "tokenizer.json"
    document = json.loads(our_path.read_text(encoding="utf-8"))
    hf_like = {"added_tokens": [{"id": i, "content": t} for t, i in
                                document["special_tokens"].items()],
               "model": {"vocab": document["vocab"]}}
    edit(hf_like)
    document["special_tokens"] = {e["content"]: e["id"] for e in hf_like["added_tokens"]}
    document["vocab"] = hf_like["model"]["vocab"]
    our_path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(LLMScratchError, match=re.escape(message)):
        Tokenizer.load(our_path)


# ------------------------------------------------------------ export to HF


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_trained_tokenizer_exports_to_tokenizers_and_transformers(tmp_path, pattern):
    tok = train_bpe(shakespeare_texts()[:2], 1500, pattern, special_tokens=QWEN_SPECIALS)
    path = save_hf_tokenizer(tok.parts, tmp_path / "export")
    texts = hf_battery() + CHAT[1:]
    assert_same_ids(tok, tokenizers.Tokenizer.from_file(str(path)), texts)

    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    for text in texts:
        ids = fast(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text, allowed_special="all")
        assert fast.decode(ids) == tok.decode(ids)
    assert Tokenizer.load(path).encode(texts[-1], allowed_special="all") == ids


def test_merges_from_ranks_reproduce_the_rank_rule():
    ranks = Tokenizer.gpt2().mergeable_ranks
    merges = merges_from_ranks(ranks)
    assert len(merges) >= 50_000
    assert merges[0] == (b" ", b"t")  # GPT-2's first merge, rank 256
    tokens = {left + right for left, right in merges}
    assert all(token in ranks for token in tokens)


# ------------------------------------------------------------ .tiktoken


def test_tiktoken_file_round_trip_and_tiktoken_reads_ours(tmp_path, shakespeare_vocab):
    path = save_tiktoken_file(shakespeare_vocab.parts, tmp_path / "shakespeare.tiktoken")
    assert load_tiktoken_bpe(str(path)) == shakespeare_vocab.mergeable_ranks
    back = Tokenizer.from_parts(load_tiktoken_file(path, pattern=shakespeare_vocab.pattern,
                                                   special_tokens={}))
    for text in hf_battery():
        assert back.encode(text) == shakespeare_vocab.encode(text)


def test_gpt2_through_a_tiktoken_file(tmp_path):
    gpt2 = Tokenizer.gpt2()
    path = save_tiktoken_file(gpt2.parts, tmp_path / "gpt2.tiktoken")
    back = Tokenizer.from_parts(load_tiktoken_file(path))  # GPT-2's pattern, <|endoftext|> 50256
    assert back.eot_id == 50256 and back.vocab_size == 50257
    for text in BATTERY:
        assert back.encode(text, disallowed_special="none") == gpt2.encode(
            text, disallowed_special="none"
        )


def test_bad_tiktoken_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_bytes(b"IQ== 0\nnot base64!! x\n")
    with pytest.raises(LLMScratchError, match="bad.tiktoken:2"):
        load_tiktoken_file(path)


# ------------------------------------------------------------ merging rules


def test_heap_merging_equals_the_textbook_loop():
    ranks = Tokenizer.gpt2().mergeable_ranks
    rank_of = rank_by_token(ranks)
    for text in BATTERY[1:14] + ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", " Supercalifragilistic"]:
        piece = text.encode("utf-8", "replace")[:400]
        assert split_piece(piece, rank_of) == simple_split_piece(piece, ranks)
