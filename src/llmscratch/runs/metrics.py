"""metrics.jsonl: one JSON object per line, appended as a run trains.

Each record is written with a single `write` call on a file opened for
appending, so a record is either all there or (killed mid-write) a cut line
that `read` skips. On resume, records of steps the checkpoint had not
reached are dropped (`truncate_after`): the resumed run writes them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.io import atomic_write_text, parse_json


class MetricsLog:
    """Append-only metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as err:
            raise LLMScratchError(f"cannot write {self.path}: {err.strerror}") from None

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = parse_json(line, str(self.path))
            except LLMScratchError:  # a line cut by a kill: ignore it
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the checkpoint had not reached."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
