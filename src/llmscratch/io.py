"""Small file helpers that every stage needs, written once.

Writing:

- `atomic_write_bytes` / `atomic_write_text` / `atomic_write_json`: a reader
  (or a process killed mid-write) sees the old file or the new one, never half
  of one. The data goes to a temporary file in the same folder, is flushed to
  disk, and is renamed over the target; a rename within one filesystem is
  atomic.
- `sha256_file`: the SHA-256 of a file, read in blocks (a checkpoint or a shard
  of many GB never sits in memory).
- `check_output_folder` / `write_folder`: the one rule for every command that
  writes a folder (a run, a Hugging Face export, a PEFT adapter, prepared data).
  A missing or empty folder is written; a folder that holds what the command
  writes is replaced only with --overwrite; anything else (a file, a folder of
  the user's own files) is refused, whatever the flags. The new folder is built
  beside the target and renamed into place: a failure or a kill leaves the old
  folder, or nothing, never half of each.

Failures to write (a full disk, a read-only folder) become `LLMScratchError`
naming the file, so the command line reports them in one line.

Reading what users give us, so that every reader fails the same way: one
`LLMScratchError` line naming the file (and the line in it).

- `read_text`: a file's UTF-8 text (missing, unreadable, not text: one line).
- `parse_json`, `read_json`: a JSON value from text, a JSON object from a file.
- `read_json_records`: the objects of a data file, a JSON list (.json) or one
  a line (JSON Lines, .jsonl), each with its line number for messages; every
  reader of records (instructions, preference pairs, prompts, labeled texts,
  task examples) goes through it. `json_lines` and `json_list_items` parse.
- `parse_yaml`: a YAML document from text.

Syntax errors are not the only way valid-looking JSON or YAML breaks a reader.
Python's parsers recurse once per level of nesting, so 100,000 `[` exhaust
the interpreter's stack (RecursionError); and since Python 3.11 (and 3.10.7)
turning a string of more than 4,300 digits into an int raises ValueError (the
limit guards against conversions that take quadratic time). Both are caught
here and reported like a syntax error, with the line they are on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

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


# --- reading ------------------------------------------------------------------------------


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`, or one line saying why not; `what` names the file's role."""
    path = Path(path)
    if not path.is_file():
        raise LLMScratchError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LLMScratchError(f"{what} {path} is not UTF-8 text (bad byte at offset "
                              f"{err.start}); convert it to UTF-8 first") from None
    except OSError as err:
        raise LLMScratchError(f"cannot read {what} {path}: {err.strerror}") from None


def parse_json(text: str, where: str, first_line: int = 1) -> Any:
    """The JSON value in `text`, which starts on line `first_line` of the file `where`.

    Whatever is wrong (a syntax error, nesting too deep, an integer too long)
    is one line: "FILE:LINE: ...".
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line, problem = err.lineno, f"not valid JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        line, problem = _deepest_nesting(text)
    except ValueError as err:  # Python's limit on the digits of an int
        line, problem = _long_integer(text) or (0, " ".join(str(err).split()))
    raise LLMScratchError(f"{where}:{first_line + line - 1}: {problem}" if line
                          else f"{where}: {problem}")


def read_json(path: str | os.PathLike, what: str = "") -> dict:
    """The JSON object in `path`; a missing, unreadable or malformed file is one clear line.

    `what` says what the file is for in the message ("the run's" run.json).
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if not path.is_file():
        raise LLMScratchError(f"{label} not found")
    document = parse_json(read_text(path, what or "file"), str(path))
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


def read_json_records(path: str | os.PathLike, what: str = "data file") -> list[tuple[int, dict]]:
    """(line number, object) for each record of `path`: a JSON list if it ends in .json,
    else JSON Lines (one object a line). An empty file, or one without records, is an error.
    """
    path = Path(path)
    text = read_text(path, what).removeprefix("\ufeff")  # the byte-order mark some editors write
    if not text.strip():
        raise LLMScratchError(f"{what} {path} is empty; give a file with records in it")
    records = (json_list_items(text, str(path)) if path.suffix == ".json"
               else json_lines(text, str(path)))
    if not records:
        raise LLMScratchError(f"{path} has no records; give at least one")
    return records


def json_lines(text: str, where: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of JSON Lines `text` (the file `where`)."""
    objects = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        record = parse_json(raw, where, first_line=line)
        if not isinstance(record, dict):
            raise LLMScratchError(f"{where}:{line}: expected a JSON object, got "
                                  f"{type(record).__name__}")
        objects.append((line, record))
    return objects


def json_list_items(text: str, where: str) -> list[tuple[int, dict]]:
    """(line number, object) for each item of the JSON list in `text` (the file `where`).

    `parse_json` checks the whole text; then a second pass decodes the list
    one item at a time (`raw_decode` says where each ends) to learn the line
    each item starts on, for messages about it.
    """
    document = parse_json(text, where)
    if not isinstance(document, list):
        raise LLMScratchError(f"{where} must hold a JSON list of records, not a "
                              f"{type(document).__name__}; or write one record a line as .jsonl")
    decoder = json.JSONDecoder()
    items, position, line, counted = [], text.index("[") + 1, 1, 0
    while len(items) < len(document):
        while text[position] in " \t\r\n,":  # to the start of the next item
            position += 1
        line, counted = line + text.count("\n", counted, position), position
        item, position = decoder.raw_decode(text, position)
        if not isinstance(item, dict):
            raise LLMScratchError(f"{where}:{line}: expected a JSON object, got "
                                  f"{type(item).__name__}")
        items.append((line, item))
    return items


def parse_yaml(text: str, where: str) -> Any:
    """The YAML document in `text`; whatever is wrong is one line naming `where`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LLMScratchError(f"{where} is not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:
        line, problem = _deepest_nesting(text)
    except ValueError as err:  # Python's limit on the digits of an int, a date like 2024-13-01
        line, problem = _long_integer(text) or (0, " ".join(str(err).split()))
    raise LLMScratchError(f"{where} cannot be read" + (f" at line {line}" if line else "")
                          + f": {problem}")


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line message, as one line: the problem and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"


# A string (with its escapes), a bracket, or a number: enough of JSON (and of YAML's
# flow style) to find the nesting and the long integers that defeat Python's parsers.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')


def _line_at(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _deepest_nesting(text: str) -> tuple[int, str]:
    """(line, problem) for the deepest nesting of brackets in `text`."""
    depth = deepest = at = 0
    for token in _TOKENS.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest, at = depth, token.start()
        elif token.group() in ("]", "}"):
            depth -= 1
    return _line_at(text, at), (f"nested {deepest:,} levels deep, deeper than Python's "
                                f"parser goes (about {sys.getrecursionlimit():,})")


def _long_integer(text: str) -> tuple[int, str] | None:
    """(line, problem) for the first integer with more digits than Python converts, if any."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()  # 0: no limit (before 3.11)
    for token in _TOKENS.finditer(text):
        digits = token.group().lstrip("-")
        if limit and digits.isdigit() and len(digits) > limit:
            return (_line_at(text, token.start()), f"an integer of {len(digits):,} digits, "
                    f"more than Python reads ({limit:,})")
    return None
