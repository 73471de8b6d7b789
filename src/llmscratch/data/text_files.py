"""Reading training text from files in blocks, so a 100 MB corpus is never whole in memory.

`train_bpe` takes any iterable of strings and treats each as a document.
`iter_text_blocks` yields a file as blocks of a few MB, each cut just before a
space that follows a non-space character. Under the gpt2 and gpt4 patterns
no pre-token spans such a point (see `patterns.split_at_safe_points`), so the
words counted are exactly those of the whole file, while memory holds one
block. Under the "none" pattern the file is yielded whole.

Bytes are decoded with an incremental UTF-8 decoder, which both copes with a
character cut by the block boundary and reports the byte offset of invalid
input. Line endings are kept as they are ("\\r\\n" stays two characters):
the tokenizer must see the text the user will later encode.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from pathlib import Path

from llmscratch.errors import LLMScratchError

BLOCK_BYTES = 4 << 20


def iter_text_blocks(
    path: str | Path, whole: bool = False, block_bytes: int = BLOCK_BYTES
) -> Iterator[str]:
    """Yield the text of a UTF-8 file in blocks cut at safe points (or whole)."""
    path = Path(path)
    if not path.is_file():
        raise LLMScratchError(f"data file not found: {path}; check the --data path")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    carry = ""
    offset = 0
    has_text = False
    try:
        with path.open("rb") as file:
            while True:
                data = file.read(block_bytes)
                try:
                    block = decoder.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    raise LLMScratchError(
                        f"data file {path} is not UTF-8 text (bad byte at offset "
                        f"{offset + exc.start}); convert it to UTF-8 first"
                    ) from None
                offset += len(data)
                has_text = has_text or not block.isspace() and bool(block)
                text = carry + block
                if not data:
                    break
                cut = 0 if whole else _last_safe_cut(text)
                if cut > 0:
                    yield text[:cut]
                carry = text[cut:]
    except OSError as exc:
        raise LLMScratchError(f"cannot read data file {path}: {exc.strerror}") from None
    if not has_text:
        raise LLMScratchError(f"data file {path} is empty; give a file with text in it")
    if text:
        yield text


def check_files(paths: Iterable[str | Path]) -> list[Path]:
    """Fail early, before any work, on a path that is missing or an empty file."""
    checked = []
    for path in map(Path, paths):
        if not path.is_file():
            raise LLMScratchError(f"data file not found: {path}; check the --data path")
        if path.stat().st_size == 0:
            raise LLMScratchError(f"data file {path} is empty; give a file with text in it")
        checked.append(path)
    return checked


def iter_files(paths: Iterable[str | Path], whole: bool = False) -> Iterator[str]:
    """The blocks of several files, one file after another (checked first)."""
    for path in check_files(paths):
        yield from iter_text_blocks(path, whole)


def _last_safe_cut(text: str) -> int:
    """Index of the last space that follows a non-space character, or 0."""
    cut = text.rfind(" ")
    while cut > 0 and text[cut - 1].isspace():
        cut = text.rfind(" ", 0, cut)
    return max(cut, 0)
