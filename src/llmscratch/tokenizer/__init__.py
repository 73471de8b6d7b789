"""Byte-level BPE tokenization, written from scratch and compatible with GPT-2.

Where to read what:

    patterns.py       the pre-tokenizer regexes (gpt2, gpt4, none)
    train.py          the fast, incremental BPE trainer (`train_bpe`)
    reference.py      the textbook trainer it is tested against
    bpe.py            merging one word's bytes into tokens
    tokenizer.py      `Tokenizer`: encode, decode, special tokens
    fast_path.py      the same encoding by tiktoken's Rust code, on all cores
    specials.py       special-token rules (which "<|...|>" text becomes an id)
    streaming.py      `StreamDecoder`, `StopText`: generated text as it comes, stop strings
    byte_alphabet.py  GPT-2's printable spelling of bytes, used in files
    parts.py          `TokenizerParts`: what the file formats read and write, checked
    storage.py        our tokenizer.json format (save / load)
    openai_files.py   GPT-2's encoder.json + vocab.bpe, and .tiktoken files
    hf_json.py        Hugging Face tokenizer.json, import and export
    named.py          `open_tokenizer`: gpt2, a directory, a tokenizer.json or .tiktoken file
    chat.py           chat templates: a conversation as the text a chat model continues
    display.py        coloured token boundaries, for `llmscratch tokenizer inspect`

Its command line is cli/tokenizer.py; reading training text from files is
data/text_files.py.

The guide is docs/tokenizer.md.

Typical use::

    from llmscratch.tokenizer import Tokenizer, train_bpe
    tok = train_bpe(texts, vocab_size=4096)      # or Tokenizer.gpt2()
    ids = tok.encode("To be, or not to be")
    text = tok.decode(ids)
    tok.save("runs/demo/tokenizer")

Nothing here imports torch, so tokenizer commands start fast.
"""

from llmscratch.tokenizer.named import open_tokenizer
from llmscratch.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS
from llmscratch.tokenizer.specials import ENDOFTEXT
from llmscratch.tokenizer.streaming import StopText, StreamDecoder
from llmscratch.tokenizer.tokenizer import Tokenizer
from llmscratch.tokenizer.train import train_bpe

__all__ = [
    "ENDOFTEXT",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "PATTERNS",
    "StopText",
    "StreamDecoder",
    "Tokenizer",
    "open_tokenizer",
    "train_bpe",
]
