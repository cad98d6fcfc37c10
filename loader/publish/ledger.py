"""The spool ledger: which spooled report has reached which sink.

Layout, all in the spool directory (written atomically, see loader.publish.spool):
    <hex>.cbor            a report, named by the SHA-256 of its bytes
    <hex>.<sink>.json     the delivery record of that report for one sink
    .publish.lock         held (flock) by whoever is delivering from this spool

A report without a record, or with a record whose state is not "delivered", is pending. A record
may carry an "intent" (the transaction about to be sent) so that a publisher killed between
sending and recording finds its own transaction again; the chain is checked before any resend.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loader.errors import PublishError
from loader.publish.spool import atomic_write

log = logging.getLogger("trusted-loader")

MAX_REPORT_BYTES = 16 << 20
MAX_RECORD_BYTES = 64 << 10
RECORD_FORMAT = "trusted-loader/delivery/v1"
_ENTRY = re.compile(r"([0-9a-f]{64})\.cbor")
SINK_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,95}")


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class SpoolEntry:
    hex: str
    path: Path

    @property
    def digest(self) -> str:
        return f"sha256:{self.hex}"

    def read(self) -> bytes:
        """The report bytes, after checking they still hash to the entry's name."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_REPORT_BYTES + 1)
        except OSError as exc:
            raise PublishError(f"{self.path}: cannot read spooled report: {exc.strerror}") from exc
        if len(data) > MAX_REPORT_BYTES:
            raise PublishError(f"{self.path}: spooled report larger than {MAX_REPORT_BYTES} bytes")
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.hex:
            raise PublishError(f"{self.path}: spooled report is corrupt: its SHA-256 is {actual}")
        return data


@dataclass(frozen=True)
class DeliveryRecord:
    sink: str
    digest: str
    state: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    next_attempt: float = 0.0
    updated: str = ""
    intent: dict[str, Any] | None = None
    receipt: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None

    @property
    def delivered(self) -> bool:
        return self.state == "delivered"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "sink": self.sink,
            "digest": self.digest,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt,
            "updated": self.updated,
            "intent": self.intent,
            "receipt": self.receipt,
            "error_kind": self.error_kind,
        }

    @classmethod
    def from_json(cls, doc: Any) -> DeliveryRecord:
        if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
            raise ValueError(f"expected a {RECORD_FORMAT} object")
        record = cls(
            sink=doc["sink"],
            digest=doc["digest"],
            state=doc["state"],
            attempts=doc["attempts"],
            last_error=doc["last_error"],
            next_attempt=doc["next_attempt"],
            updated=doc["updated"],
            intent=doc["intent"],
            receipt=doc["receipt"],
            error_kind=doc.get("error_kind"),
        )
        kinds = {"sink": str, "digest": str, "state": str, "attempts": int, "next_attempt": (int, float)}
        for name, kind in kinds.items():
            if not isinstance(getattr(record, name), kind):
                raise ValueError(f"{name}: wrong type")
        if record.error_kind is not None and not isinstance(record.error_kind, str):
            raise ValueError("error_kind: wrong type")
        if record.state not in ("pending", "delivered"):
            raise ValueError(f"state: expected pending or delivered, found {record.state!r}")
        return record


class Ledger:
    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir

    def entries(self) -> list[SpoolEntry]:
        """Spooled reports, oldest first."""
        try:
            names = os.listdir(self.spool_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise PublishError(f"{self.spool_dir}: cannot list the spool: {exc.strerror}") from exc
        found = []
        for name in names:
            match = _ENTRY.fullmatch(name)
            if match:
                path = self.spool_dir / name
                with contextlib.suppress(FileNotFoundError):
                    found.append((path.stat().st_mtime_ns, name, SpoolEntry(match.group(1), path)))
        return [entry for _, _, entry in sorted(found)]

    def entry(self, digest_hex: str) -> SpoolEntry:
        path = self.spool_dir / f"{digest_hex}.cbor"
        if not _ENTRY.fullmatch(path.name) or not path.is_file():
            raise PublishError(f"{path}: no such spooled report")
        return SpoolEntry(digest_hex, path)

    def _record_path(self, entry: SpoolEntry, sink: str) -> Path:
        if not SINK_ID.fullmatch(sink):
            raise ValueError(f"invalid sink id {sink!r}")
        return self.spool_dir / f"{entry.hex}.{sink}.json"

    def record(self, entry: SpoolEntry, sink: str) -> DeliveryRecord:
        """The delivery record, or a fresh pending one. An unreadable record counts as pending:
        delivery checks the destination before sending, so re-trying is safe and nothing is lost."""
        path = self._record_path(entry, sink)
        fresh = DeliveryRecord(sink=sink, digest=entry.digest)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return fresh
        except OSError as exc:
            raise PublishError(f"{path}: cannot read delivery record: {exc.strerror}") from exc
        try:
            record = DeliveryRecord.from_json(json.loads(raw))
            if record.sink != sink or record.digest != entry.digest:
                raise ValueError("sink or digest does not match the file name")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ignoring unreadable delivery record (%s); treating as pending", path, exc)
            return fresh
        return record

    def write(self, entry: SpoolEntry, record: DeliveryRecord) -> DeliveryRecord:
        record = replace(record, updated=now_text())
        text = json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write(self._record_path(entry, sink=record.sink), text.encode("utf-8"), mode=0o600)
        return record

    def migrate(self, old: str, new_of: Callable[[DeliveryRecord], str]) -> int:
        """Re-key every record of sink `old` to `new_of(record)`, as pending: the new sink checks
        the destination again before it counts anything as delivered. A record already present
        under the new key wins. Returns how many were moved."""
        moved = 0
        for entry in self.entries():
            path = self._record_path(entry, old)
            if not path.exists():
                continue
            record = self.record(entry, old)
            new = new_of(record)
            if not (self._record_path(entry, new)).exists():
                note = f"migrated from ledger key {old}; checking the destination again"
                self.write(
                    entry, replace(record, sink=new, state="pending", last_error=note, next_attempt=0.0)
                )
                moved += 1
            path.unlink()
        if moved:
            log.info("migrated %d delivery record(s) from %s", moved, old)
        return moved

    def pending(self, sink: str) -> list[tuple[SpoolEntry, DeliveryRecord]]:
        pairs = [(entry, self.record(entry, sink)) for entry in self.entries()]
        return [(e, r) for e, r in pairs if not r.delivered]

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Exclusive right to deliver from this spool; waits up to `timeout` seconds."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        path = self.spool_dir / ".publish.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise PublishError(f"{path}: cannot lock the spool: {exc.strerror}") from exc
                    if time.monotonic() >= deadline:
                        raise PublishError(
                            f"{path}: another publisher holds the spool lock; gave up after {timeout:.0f} s"
                        ) from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)
