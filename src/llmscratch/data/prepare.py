"""`llmscratch data prepare`: text files -> token shards on disk, once, in parallel.

Training reads token ids, not text. Tokenizing a large corpus takes a while,
so it is done once, ahead of training, and stored as flat binary arrays that
the loader memory-maps (data/loader.py). The pipeline streams:

    documents (data/documents.py)         one piece at a time
      -> chunks of ~1 MB of text          the unit of work of one process
      -> worker processes: encode with the tokenizer's fast path
         (`Tokenizer.encode_batch`, tiktoken's Rust encoder), add
         <|endoftext|> after each document, split off the validation tail
      -> ShardWriter: append to train-NNNNN.bin / val-NNNNN.bin,
         hashing as it writes; start a new shard every `shard_tokens`
      -> manifest.json (data/manifest.py), written last

all inside a temporary folder beside --out, renamed to it at the end: a
mistake found half-way (a bad line deep in a .jsonl file) leaves nothing
behind, and an old --out replaced with --overwrite stays whole until then.

Only a bounded number of chunks is in flight (two per process), and results
are written in input order, so memory does not grow with the corpus and the
output does not depend on the number of processes.

Validation split: from every chunk, the final `val_fraction` of its tokens
goes to the validation shards. Held-out text is then spread over the whole
corpus (one file or many), the split needs no second pass, and it is fixed
for a given corpus, tokenizer and chunk size.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmscratch.data.documents import Piece, find_inputs, iter_pieces
from llmscratch.data.manifest import (
    FORMAT,
    MANIFEST,
    TOKENIZER_DIR,
    VERSION,
    ids_dtype,
    tokenizer_hash,
    write_manifest,
)
from llmscratch.errors import LLMScratchError
from llmscratch.io import check_output_folder, write_folder
from llmscratch.progress import progress
from llmscratch.tokenizer import Tokenizer, open_tokenizer


@dataclass
class PrepareConfig:
    """What `llmscratch data prepare` reads, how it encodes, and where it writes.

    Fields:
        data: .txt/.jsonl/.parquet files, directories or globs.
        tokenizer: a saved tokenizer directory, or "gpt2".
        out: the prepared-data directory to create.
        text_field: the field (.jsonl) or column (.parquet) that holds the text.
        val_fraction: fraction of each chunk's tokens held out for validation.
        shard_tokens: tokens per shard file (the last shard of a split is shorter).
        workers: encoding processes; 0 means one per CPU core.
        chunk_bytes: text bytes per unit of work (and per validation cut).
        overwrite: replace `out` if it exists.
    """

    data: list[str] = field(default_factory=list)
    tokenizer: str = ""
    out: str = ""
    text_field: str = "text"
    val_fraction: float = 0.01
    shard_tokens: int = 100_000_000
    workers: int = 0
    chunk_bytes: int = 1 << 20
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise LLMScratchError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.shard_tokens <= 0 or self.chunk_bytes <= 0 or self.workers < 0:
            raise LLMScratchError("--shard-tokens and --chunk-bytes must be positive, "
                                  "--workers >= 0")


def load_tokenizer(name: str) -> Tokenizer:
    """The tokenizer named on the command line: gpt2, a directory, a .json or .tiktoken file."""
    if not name:
        raise LLMScratchError("data prepare needs --tokenizer DIR (or gpt2); train one with "
                              "`llmscratch tokenizer train`")
    return open_tokenizer(name)


# --- encoding, in worker processes ----------------------------------------------------

_worker_state: dict = {}


def _init_worker(tokenizer_dir: str, val_fraction: float, dtype: str) -> None:
    _worker_state.update(tokenizer=Tokenizer.load(tokenizer_dir), val_fraction=val_fraction,
                         dtype=np.dtype(dtype))


@dataclass
class EncodedChunk:
    train: np.ndarray  # (N,) token ids
    val: np.ndarray  # (M,) token ids, the chunk's tail
    train_bytes: int  # UTF-8 bytes of text behind each part (separators excluded)
    val_bytes: int
    documents: int
    source_bytes: int


def _encode_chunk(pieces: list[Piece]) -> EncodedChunk:
    """Encode one chunk: ids of every piece, <|endoftext|> after each document."""
    tokenizer = _worker_state["tokenizer"]
    eot = tokenizer.eot_id
    dtype = _worker_state["dtype"]
    encoded = tokenizer.encode_batch([p.text for p in pieces], num_threads=1)
    parts = []
    for piece, piece_ids in zip(pieces, encoded, strict=True):
        parts.append(np.asarray(piece_ids, dtype=dtype))
        if piece.ends_document:
            parts.append(np.array([eot], dtype=dtype))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    n_val = round(len(ids) * _worker_state["val_fraction"])
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
    text_bytes = sum(len(p.text.encode("utf-8")) for p in pieces)
    val_bytes = len(tokenizer.decode_bytes(val[val != eot]))
    return EncodedChunk(train, val, text_bytes - val_bytes, val_bytes,
                        sum(p.ends_document for p in pieces), sum(p.source_bytes for p in pieces))


def _chunks(pieces: Iterable[Piece], chunk_bytes: int) -> Iterator[list[Piece]]:
    chunk, size = [], 0
    for piece in pieces:
        chunk.append(piece)
        size += len(piece.text)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# --- writing shards -----------------------------------------------------------------


class ShardWriter:
    """Appends token ids to numbered shard files of one split, hashing as it goes."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.bytes = 0
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None:
                self._open()
            room = self.shard_tokens - self._tokens
            head, ids = ids[:room], ids[room:]
            data = head.astype(self.dtype, copy=False).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._tokens += len(head)
            if self._tokens == self.shard_tokens:
                self._close()

    def close(self) -> dict:
        if self._file is not None or not self.shards:
            if self._file is None:
                self._open()  # an empty split still gets one (empty) shard
            self._close()
        return {"tokens": sum(s["tokens"] for s in self.shards), "bytes": self.bytes,
                "shards": self.shards}

    def _open(self) -> None:
        self._name = f"{self.split}-{len(self.shards):05d}.bin"
        self._tmp = self.root / f".{self._name}.tmp"
        self._file = self._tmp.open("wb")
        self._hash = hashlib.sha256()
        self._tokens = 0

    def _close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.root / self._name)
        self.shards.append({"name": self._name, "tokens": self._tokens,
                            "sha256": self._hash.hexdigest()})


# --- the whole pipeline ---------------------------------------------------------------


def prepare(cfg: PrepareConfig) -> dict:
    """Tokenize `cfg.data` into shards under `cfg.out`; return the manifest (a dict)."""
    if not cfg.data:
        raise LLMScratchError("data prepare needs --data FILES|DIRS|GLOBS")
    if not cfg.out:
        raise LLMScratchError("data prepare needs --out DIR")
    paths = find_inputs(cfg.data)
    tokenizer = load_tokenizer(cfg.tokenizer)
    _ = tokenizer.eot_id  # fails clearly, before anything is written, without <|endoftext|>
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    manifest = {}  # a bad line found half-way changes nothing: the folder is built aside
    write_folder(out, lambda new: manifest.update(_write_prepared(new, paths, tokenizer, cfg)))
    return manifest


def _write_prepared(out: Path, paths: list[Path], tokenizer: Tokenizer,
                    cfg: PrepareConfig) -> dict:
    """Tokenize `paths` into shards, the tokenizer and the manifest in the empty folder `out`."""
    tokenizer.save(out / TOKENIZER_DIR)
    dtype = np.dtype(ids_dtype(tokenizer.vocab_size))
    writers = {s: ShardWriter(out, s, dtype, cfg.shard_tokens) for s in ("train", "val")}
    workers = cfg.workers or os.cpu_count() or 1
    # Pre-tokenizers other than gpt2/gpt4 may join pieces across block cuts: read .txt whole.
    whole_txt = tokenizer.pattern_name not in ("gpt2", "gpt4")
    pieces = (p for path in paths for p in iter_pieces(path, cfg.text_field, whole_txt))
    chunks = _chunks(pieces, cfg.chunk_bytes)
    total = sum(p.stat().st_size for p in paths)
    init_args = (str(out / TOKENIZER_DIR), cfg.val_fraction, dtype.name)
    started = time.perf_counter()
    documents = 0
    with progress(total=total, unit="B", unit_scale=True, desc="prepare") as bar:
        for chunk in _encode_all(chunks, workers, init_args):
            writers["train"].write(chunk.train)
            writers["val"].write(chunk.val)
            writers["train"].bytes += chunk.train_bytes
            writers["val"].bytes += chunk.val_bytes
            documents += chunk.documents
            bar.update(chunk.source_bytes)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": {"sha256": tokenizer_hash(tokenizer), "vocab_size": tokenizer.vocab_size,
                      "eot_id": tokenizer.eot_id},
        "dtype": dtype.name,
        "val_fraction": cfg.val_fraction,
        "chunk_bytes": cfg.chunk_bytes,
        "documents": documents,
        "sources": [str(p) for p in paths],
        "splits": {name: writer.close() for name, writer in writers.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_manifest(out, manifest)
    return manifest


def _check_out(out: Path, overwrite: bool) -> None:
    """Fail, changing nothing, unless `out` is new, empty, or prepared data to replace
    (the rule of every output folder: io.py, `check_output_folder`)."""
    check_output_folder(out, overwrite, lambda path: (path / MANIFEST).is_file(),
                        "prepared data")


def _encode_all(chunks: Iterator[list[Piece]], workers: int, init_args: tuple
                ) -> Iterator[EncodedChunk]:
    """Encoded chunks in input order, from `workers` processes with bounded work in flight.

    `Pool.imap` would read the whole input ahead of the workers (its feeder
    thread does not wait), so chunks are submitted by hand, at most two per
    worker beyond the one being written.
    """
    if workers == 1:
        _init_worker(*init_args)
        yield from map(_encode_chunk, chunks)
        return
    context = multiprocessing.get_context("spawn")  # no inherited threads or torch state
    with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
