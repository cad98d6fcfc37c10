"""Stopping the loader: SIGTERM (systemd stop, `docker stop`) becomes an exception.

Python's default for SIGTERM is to die at once, skipping every `finally`; as PID 1 in a
container it is ignored altogether. Raising `Terminated` instead lets the boot sequence stop
the workload's process group, wipe the staged inputs and drop the key before it exits.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived; a BaseException so that no `except Exception` can swallow it."""


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
