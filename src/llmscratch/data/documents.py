"""Reading documents from .txt, .jsonl and .parquet files, as a stream.

`data prepare` tokenizes corpora far larger than memory, so documents are
read one piece at a time and never collected. Each piece is a `Piece`: some
text, whether the document ends with it, and how many bytes of the input
file it stands for (for the progress bar's MB/s).

- `.txt`: the whole file is one document. A big file arrives in blocks of a
  few MB cut just before a space (data/text_files.py), where the gpt2
  and gpt4 pre-tokenizers never join two pieces, so encoding block by block
  gives the same ids as encoding the whole file.
- `.jsonl`: one JSON object per line; its `text_field` is one document.
- `.parquet`: one row per document, read a record batch at a time (pyarrow).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmscratch.data.text_files import iter_text_blocks
from llmscratch.errors import LLMScratchError
from llmscratch.io import parse_json

SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass
class Piece:
    text: str
    ends_document: bool
    source_bytes: int  # bytes of the input file this piece accounts for


def find_files(patterns: Sequence[str], suffixes: Sequence[str]) -> list[Path]:
    """Files named by paths, directories (their files ending in one of `suffixes`) or globs.

    Every pattern must name at least one file, and every file must exist:
    a typo in --data is an error, never an empty corpus.
    """
    paths: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in suffixes and f.is_file())
        elif any(ch in pattern for ch in "*?["):
            found = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
        else:
            found = [p]
        if not found:
            raise LLMScratchError(f"no {'/'.join(suffixes)} files match {pattern!r}; "
                                  "check the --data path")
        for path in found:
            if not path.is_file():
                raise LLMScratchError(f"data file not found: {path}; check the --data path")
        paths.extend(found)
    return paths


def find_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files for `data prepare`: .txt, .jsonl or .parquet (read differently, by suffix)."""
    paths = find_files(patterns, SUFFIXES)
    for path in paths:
        if path.suffix not in SUFFIXES:
            raise LLMScratchError(f"cannot read {path}: its suffix is not one of "
                                  f"{', '.join(SUFFIXES)}; rename or convert it")
    return paths


def iter_pieces(path: Path, text_field: str = "text", whole_txt: bool = False) -> Iterator[Piece]:
    """The documents of one file as pieces (see the module docstring)."""
    if path.suffix == ".txt":
        yield from _txt_pieces(path, whole_txt)
    elif path.suffix == ".jsonl":
        yield from _jsonl_pieces(path, text_field)
    else:
        yield from _parquet_pieces(path, text_field)


def _txt_pieces(path: Path, whole: bool) -> Iterator[Piece]:
    previous = None
    for block in iter_text_blocks(path, whole=whole):
        if previous is not None:
            yield Piece(previous, False, len(previous.encode("utf-8")))
        previous = block
    if previous is not None:
        yield Piece(previous, True, len(previous.encode("utf-8")))


def _jsonl_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    with path.open("rb") as file:
        for line_no, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                raise LLMScratchError(f"{path}:{line_no}: not UTF-8 text; convert the file to "
                                      "UTF-8 first") from None
            record = parse_json(line, str(path), first_line=line_no)
            try:
                text = record[text_field]
            except (KeyError, TypeError):
                raise LLMScratchError(
                    f"{path}:{line_no} has no {text_field!r} field; name the text field "
                    "with --text-field"
                ) from None
            if not isinstance(text, str):
                raise LLMScratchError(f"{path}:{line_no}: field {text_field!r} is "
                                      f"{type(text).__name__}, not a string")
            yield Piece(text, True, len(line))


def _parquet_pieces(path: Path, text_field: str) -> Iterator[Piece]:
    try:  # an optional dependency (the data extra), so imported only for .parquet files
        import pyarrow.parquet as pq
    except ImportError:
        raise LLMScratchError("reading .parquet needs pyarrow: pip install 'llmscratch[data]'"
                              ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise LLMScratchError(f"cannot read {path} as parquet: {err}") from None
    if text_field not in parquet.schema_arrow.names:
        raise LLMScratchError(
            f"{path} has no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}"
            "); name the text column with --text-field"
        )
    rows = max(parquet.metadata.num_rows, 1)
    file_bytes = path.stat().st_size
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
        texts = batch.column(0).to_pylist()
        share = file_bytes * len(texts) // rows  # the file's bytes, spread over its rows
        for i, text in enumerate(texts):
            yield Piece(text or "", True, share if i == 0 else 0)
