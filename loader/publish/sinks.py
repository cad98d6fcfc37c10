"""Where reports go: the sink protocol, its error, and the file sink (an outbox directory).

A sink must be idempotent: delivering a report it already holds changes nothing and succeeds,
and it checks the destination before writing (a crash may have hidden an earlier success).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from loader.errors import PublishError
from loader.publish.ledger import DeliveryRecord
from loader.publish.spool import atomic_write

SaveIntent = Callable[[dict[str, Any]], None]


class DeliveryError(PublishError):
    """A delivery failed. `unavailable`: the sink cannot be reached, so skip its other reports
    this round; `permanent`: retrying with the same settings will not help; `node_error`: the
    peer answered something malformed or false (the commands' "node error" exit code)."""

    def __init__(
        self, message: str, *, unavailable: bool = False, permanent: bool = False, node_error: bool = False
    ) -> None:
        super().__init__(message)
        self.unavailable = unavailable
        self.permanent = permanent
        self.node_error = node_error

    @property
    def kind(self) -> str:
        if self.node_error:
            return "node"
        return "permanent" if self.permanent else "unavailable" if self.unavailable else "retry"


class Sink(Protocol):
    """`id` is the ledger key; None until `open` (when a sink has one) has learnt it."""

    @property
    def id(self) -> str | None: ...

    label: str

    def deliver(
        self, report: bytes, record: DeliveryRecord, *, save_intent: SaveIntent, deadline: float
    ) -> dict[str, Any]:
        """Deliver `report` before time.monotonic() reaches `deadline`; return what to record
        (with "already": True when the destination held it before this call)."""
        ...

    def close(self) -> None: ...


class FileSink:
    """Copies reports into a directory as <sha256>.cbor (an outbox for another transport)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.id = "file-" + hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
        self.label = f"directory {directory}"

    def deliver(
        self, report: bytes, record: DeliveryRecord, *, save_intent: SaveIntent, deadline: float
    ) -> dict[str, Any]:
        target = self.directory / f"{hashlib.sha256(report).hexdigest()}.cbor"
        try:
            if target.is_file() and target.read_bytes() == report:
                return {"path": str(target), "already": True}
            atomic_write(target, report)
        except (OSError, PublishError) as exc:
            raise DeliveryError(f"{self.label}: {exc}", unavailable=True) from exc
        return {"path": str(target), "already": False}

    def close(self) -> None:
        pass
