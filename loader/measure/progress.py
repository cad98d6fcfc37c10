"""Progress of long hashing on a terminal: bytes done, rate, time left.

Shown on stderr only when stderr is a terminal, so logs of non-interactive runs (systemd,
CI, pipes) stay clean; the hashing rate itself always goes to the log and the report.
A Progress is shared by the hashing threads: `add` is cheap and thread-safe and redraws at
most every `interval` seconds.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TextIO

INTERVAL = 0.5


class HasPath(Protocol):
    @property
    def path(self) -> Path: ...


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    s = max(0, round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """One status line, e.g. 'hashing 1.2 GiB of 4.0 GiB (30%), 512.0 MiB/s, 0:06 left'."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{label} {human_bytes(done)}"
    if total:
        text += f" of {human_bytes(total)} ({min(100, 100 * done // total)}%)"
    text += f", {human_bytes(rate)}/s"
    if total and rate > 0 and done <= total:
        text += f", {human_seconds((total - done) / rate)} left"
    return text


class Progress:
    """Counts hashed bytes; draws a status line on `stream` when one is given."""

    def __init__(
        self,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        label: str = "hashing",
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.stream, self.label = total, stream, label
        self.interval, self.clock = interval, clock
        self.done = 0
        self.start = clock()
        self._last_draw = self.start
        self._drawn = False
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.stream is None:
                return
            now = self.clock()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        assert self.stream is not None
        line = format_line(self.label, self.done, self.total, now - self.start)
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._drawn = True

    @property
    def seconds(self) -> float:
        return self.clock() - self.start

    def finish(self) -> None:
        """Draw the final line and end it, if anything was drawn."""
        with self._lock:
            if self.stream is not None and self._drawn:
                self._draw(self.clock())
                self.stream.write("\n")
                self.stream.flush()


def for_terminal(total: int | None = None, stream: TextIO | None = None, label: str = "hashing") -> Progress:
    """A Progress that draws on `stream` (default stderr) only if it is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    return Progress(total, stream=stream if interactive else None, label=label)


def estimate_size(path: Path, limit: int = 1_000_000) -> int | None:
    """Total size of the regular files under `path`, for the time-left estimate only.

    Never used for measurement: a cheap lstat walk that gives up (None) on errors or after
    `limit` entries.
    """
    total = 0
    seen = 0
    stack = [path]
    try:
        while stack:
            current = stack.pop()
            st = os.lstat(current)
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
            elif stat.S_ISDIR(st.st_mode):
                with os.scandir(current) as it:
                    for entry in it:
                        seen += 1
                        if seen > limit:
                            return None
                        stack.append(Path(entry.path))
    except OSError:
        return None
    return total


def rate_text(done: int, seconds: float) -> str:
    """'1.0 GiB in 2.00 s (512.0 MiB/s)' for the log."""
    rate = done / seconds if seconds > 0 else 0.0
    return f"{human_bytes(done)} in {seconds:.2f} s ({human_bytes(rate)}/s)"


def hashing_meter(specs: Iterable[HasPath], stream: TextIO | None = None) -> Progress:
    """The boot's meter: draws on a terminal with a time-left estimate, else only counts."""
    meter = for_terminal(None, stream)
    if meter.stream is not None:
        sizes = [estimate_size(spec.path) for spec in specs]
        meter.total = None if None in sizes else sum(s for s in sizes if s is not None)
    return meter
