"""Small file helpers that every stage needs, written once.

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: a reader
  (or a process killed mid-write) sees the old file or the new one, never half
  of one. The data goes to a temporary file in the same folder, is flushed to
  disk, and is renamed over the target; a rename within one filesystem is
  atomic.
- `sha256_file`: the SHA-256 of a file, read in blocks (a checkpoint or a shard
  of many GB never sits in memory).
- `read_json`: a JSON object from a file, or one line that says what is wrong
  with it.

Failures to write (a full disk, a read-only folder) become `LLMScratchError`
naming the file, so the command line reports them in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from llmscratch.errors import LLMScratchError


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise LLMScratchError(f"cannot write {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes the file private; ours are meant to be read
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise LLMScratchError(f"cannot write {path}: {err.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, document: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(document, indent=indent, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str = "") -> dict:
    """The JSON object in `path`; a missing, unreadable or malformed file is one clear line.

    `what` says what the file is for in the message ("the run's run.json").
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise LLMScratchError(f"{label} not found")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise LLMScratchError(f"cannot read {label}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise LLMScratchError(f"{label} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise LLMScratchError(f"{label} is not valid JSON ({err.msg} at line {err.lineno}, "
                              f"column {err.colno})") from None
    if not isinstance(document, dict):
        raise LLMScratchError(f"{label} must hold a JSON object, not {type(document).__name__}")
    return document
