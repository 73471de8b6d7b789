"""Progress of a long job: a live bar on a terminal, a few plain lines in a log.

    bar = progress(total=4000, desc="demo", unit="step")
    for step in range(4000):
        ...
        bar.update(1)
    bar.close()

On a terminal, tqdm redraws one line in place: it ends each update with a
carriage return (`\\r`) instead of a newline, and the terminal writes the next
update over it. A file or a CI log keeps every one of those updates, so
`make demo > log` once wrote 447 KB of them. So `progress` looks at where the
output goes: a terminal gets tqdm's bar, anything else a `PlainProgress`,
which writes a whole line only when another 5% of the work is done (at
most one a second) or half a minute has passed, and once at the end:

    demo: 400/4,000 step (10%), 52 s, 7.7 step/s, loss=4.112, lr=1.5e-02

Both have the same small interface: `update(n)`, `set_postfix(name=value,
...)` (the latest figures, shown after the count), `write(text)` (a line
above the bar), `close()`, and `total` and `initial`, which a caller may
read and change (`refresh()` redraws after a change).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

EVERY_PERCENT = 5.0  # a plain line each time this much more of the work is done,
MIN_SECONDS = 1.0  # if this long has passed since the last line;
EVERY_SECONDS = 30.0  # or when this long has passed since the last line


def progress(total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0,
             unit_scale: bool = False, disable: bool = False, stream: TextIO | None = None):
    """A tqdm bar where `stream` (default: standard error) is a terminal, else `PlainProgress`.

    `disable` shows nothing (another process shows the progress), though
    `write` still prints.
    """
    stream = stream if stream is not None else sys.stderr
    if disable or not _is_terminal(stream):
        return PlainProgress(total, desc, unit, initial, unit_scale, stream, enabled=not disable)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale,
                file=stream, dynamic_ncols=True)


def write(text: str) -> None:
    """A line of text that leaves a terminal's progress bar intact (it is drawn again below)."""
    tqdm.write(text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class PlainProgress:
    """Progress as whole lines, a bounded number of them: one each time `every_percent`
    more of `total` is done (but not within `min_seconds` of the last), one when
    `every_seconds` have passed, and one at `close`. A job of T seconds writes at
    most min(100 / every_percent, T / min_seconds) + T / every_seconds + 1 lines.

    Without a `total` only time brings a line. `clock` is injectable, for tests.
    """

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it",
                 initial: float = 0, unit_scale: bool = False, stream: TextIO | None = None,
                 enabled: bool = True, every_percent: float = EVERY_PERCENT,
                 min_seconds: float = MIN_SECONDS, every_seconds: float = EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.initial = self.n = self._shown = initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.every_percent, self.every_seconds = every_percent, every_seconds
        self.min_seconds = min_seconds
        self.clock = clock
        self.postfix: dict[str, object] = {}
        self.started = self._shown_at = clock()
        self.closed = False

    def update(self, n: float = 1) -> None:
        """Count `n` more units done; write a line if enough work or time has passed."""
        self.n += n
        now = self.clock()
        more, waited = self.n - self._shown, now - self._shown_at
        enough_work = bool(self.total) and more * 100 >= self.every_percent * self.total
        if more > 0 and (waited >= self.every_seconds or (
                enough_work and waited >= self.min_seconds)):
            self._show(now)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        """Figures to show after the count (`loss=...`), from the next line on."""
        self.postfix = values

    def write(self, text: str) -> None:
        """A line of text (standard output, as tqdm.write)."""
        print(text, flush=True)

    def refresh(self) -> None:
        """Nothing to redraw: a change of `total` shows in the next line."""

    def close(self) -> None:
        """Write the last line, unless the last update already did."""
        if not self.closed and self.n != self._shown:
            self._show(self.clock())
        self.closed = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _show(self, now: float) -> None:
        self._shown, self._shown_at = self.n, now
        if self.enabled:
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        """`desc: done/total unit (percent), seconds, rate, postfix`; sizes in k, M, G with
        unit_scale."""
        elapsed = now - self.started
        done = self._count(self.n, with_unit=not self.total)
        if self.total:
            done += f"/{self._count(self.total)} ({100 * self.n / self.total:.0f}%)"
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        desc = f"{self.desc}: " if self.desc else ""
        figures = "".join(f", {name}={value}" for name, value in self.postfix.items())
        return f"{desc}{done}, {elapsed:.0f} s, {self._count(rate, digits=1)}/s{figures}"

    def _count(self, x: float, digits: int = 0, with_unit: bool = True) -> str:
        if self.unit_scale:  # 1.50MB: a byte count always with its unit
            return tqdm.format_sizeof(x) + self.unit
        return f"{x:,.{digits}f}" + (f" {self.unit}" if with_unit else "")
