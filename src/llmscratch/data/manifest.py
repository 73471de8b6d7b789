"""The `manifest.json` of a prepared-data directory: what the token shards are.

`llmscratch data prepare` writes, and training reads, a directory like

    DATA/
      manifest.json
      tokenizer/tokenizer.json      the tokenizer the ids come from
      train-00000.bin ...           flat little-endian arrays of token ids
      val-00000.bin ...

with a manifest such as

    {
      "format": "llmscratch-tokens", "version": 1,
      "tokenizer": {"sha256": "9f2c...", "vocab_size": 4096, "eot_id": 4095},
      "dtype": "uint16",                       # uint32 when the vocabulary needs it
      "val_fraction": 0.01,
      "documents": 38,
      "splits": {
        "train": {"tokens": 1203020, "bytes": 4851002,
                  "shards": [{"name": "train-00000.bin", "tokens": 1203020,
                              "sha256": "ab01..."}]},
        "val":   {...}
      }
    }

`bytes` counts the UTF-8 text bytes behind a split's tokens (document
separators excluded), so bits per byte can be computed from tokens alone.
The manifest is written last: a directory without one is not finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_json, read_json, sha256_file
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.storage import tokenizer_to_dict

FORMAT = "llmscratch-tokens"
VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical JSON: equal hashes mean equal ids for any text."""
    document = tokenizer_to_dict(tokenizer.parts)
    document.pop("name", None)  # a label, not part of the encoding
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def ids_dtype(vocab_size: int) -> str:
    """The narrowest unsigned type that holds every id: 2 bytes per token up to 65,536 ids."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass
class Manifest:
    """A parsed manifest.json, with the directory it describes."""

    root: Path
    document: dict

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.document["dtype"])

    @property
    def vocab_size(self) -> int:
        return int(self.document["tokenizer"]["vocab_size"])

    @property
    def tokenizer_sha256(self) -> str:
        return self.document["tokenizer"]["sha256"]

    def split(self, name: str) -> dict:
        return self.document["splits"][name]

    def shards(self, split: str, verify: bool = True) -> list[np.ndarray]:
        """The split's shards, memory-mapped read-only (the OS pages them in as needed).

        With `verify`, each file's size and SHA-256 are checked against the
        manifest first (about a second per GB), so a truncated or altered shard
        is found before training rather than as strange losses later.
        """
        arrays = []
        for shard in self.split(split)["shards"]:
            path = self.root / shard["name"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not path.is_file() or path.stat().st_size != expected:
                size = path.stat().st_size if path.is_file() else "missing"
                raise LLMScratchError(
                    f"shard {path} is truncated or missing ({size} bytes, manifest says "
                    f"{expected}); run `llmscratch data prepare` again"
                )
            if verify and sha256_file(path) != shard["sha256"]:
                raise LLMScratchError(
                    f"shard {path} does not match its SHA-256 in {self.root / MANIFEST}; "
                    "the file changed since it was prepared: run `llmscratch data prepare` again"
                )
            if shard["tokens"]:
                arrays.append(np.memmap(path, dtype=self.dtype, mode="r"))
        return arrays

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.root / TOKENIZER_DIR)


def write_manifest(root: Path, document: dict) -> None:
    """Write manifest.json atomically: it marks the data complete."""
    atomic_write_json(Path(root) / MANIFEST, document)


def read_manifest(directory: str | Path) -> Manifest:
    """Open a prepared-data directory, or fail with one line saying what to do."""
    root = Path(directory)
    path = root / MANIFEST
    if not root.is_dir():
        raise LLMScratchError(f"prepared data directory not found: {root}")
    if not path.is_file():
        raise LLMScratchError(
            f"{root} has no {MANIFEST}: it is not prepared data (or preparing it did not "
            f"finish); run `llmscratch data prepare --data FILES --tokenizer DIR --out {root}`"
        )
    document = read_json(path)
    if document.get("format") != FORMAT:
        raise LLMScratchError(f"{path} is not an llmscratch token manifest (format {FORMAT!r})")
    if document.get("version") != VERSION:
        raise LLMScratchError(f"{path} has version {document.get('version')!r}; this llmscratch "
                              f"reads version {VERSION}: prepare the data again")
    return Manifest(root, document)
