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
- `check_output_folder` / `write_folder`: the one rule for every command that
  writes a folder (a run, a Hugging Face export, a PEFT adapter, prepared data).
  A missing or empty folder is written; a folder that holds what the command
  writes is replaced only with --overwrite; anything else (a file, a folder of
  the user's own files) is refused, whatever the flags. The new folder is built
  beside the target and renamed into place: a failure or a kill leaves the old
  folder, or nothing, never half of each.

Failures to write (a full disk, a read-only folder) become `LLMScratchError`
naming the file, so the command line reports them in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
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


def check_output_folder(path: str | os.PathLike, overwrite: bool,
                        holds: Callable[[Path], bool], what: str, hint: str = "") -> None:
    """Fail, changing nothing, unless a folder of `what` may be written at `path`.

    holds(path): whether the folder holds `what` ("a run directory", "a Hugging Face
    model folder", ...), the only kind of folder ever replaced, and only with
    `overwrite`; `hint` follows the "already exists" line (how else to continue).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LLMScratchError(f"{path} is a file, not a folder; choose another output folder")
    if not path.is_dir() or not any(path.iterdir()):
        return
    if not holds(path):
        raise LLMScratchError(f"{path} exists and is not {what}; nothing was changed: choose "
                              f"another output folder (only {what} is ever replaced)")
    if not overwrite:
        raise LLMScratchError(f"output folder {path} already exists; pass --overwrite to "
                              f"replace it{hint}, or choose another output folder")


def write_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a new folder beside `path`, then rename it to `path`, replacing
    the folder there (which `check_output_folder` allowed): a failure or a kill leaves
    the old folder, or nothing, never half of each."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new-"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; ours are meant to be read
    except OSError as err:
        raise LLMScratchError(f"cannot write {path}: {err.strerror}") from None
    try:
        write(tmp)
        _move_into_place(tmp, path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LLMScratchError(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _move_into_place(new: Path, path: Path) -> None:
    """Rename the finished folder `new` to `path`; an old folder there is moved aside
    first, and removed only once the new one is in place."""
    if path.is_dir() and any(path.iterdir()):
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.replace(path, old / "old")
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if path.is_dir():
            path.rmdir()
        os.replace(new, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
