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
        """The measurements, as the loop writes them: a whole-number step and tokens, numbers
        for the rest. Other lines are skipped: one cut by a kill, one edited into something
        a plot cannot draw, a note such as a skipped step's."""
        return [record for record in self._records() if _is_measurement(record)]

    def truncate_after(self, step: int) -> None:
        """On resume, drop records of steps the checkpoint had not reached."""
        kept = [r for r in self._records() if _is_number(r.get("step")) and r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def _records(self) -> list[dict]:
        """Every line that holds a JSON object."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = parse_json(line, str(self.path))
            except LLMScratchError:  # a line cut by a kill (or worse): not a record
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_measurement(record: dict) -> bool:
    whole = [record.get("step"), record.get("tokens")]
    return (all(isinstance(v, int) and not isinstance(v, bool) for v in whole)
            and all(_is_number(value) for value in record.values()))
