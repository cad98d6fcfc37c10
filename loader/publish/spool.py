"""Durable storage of reports: atomic write (temp file, fsync, rename, fsync directory).

A report is never half-written: readers see either no file or the whole file. Spool entries
are named by the SHA-256 of the report bytes, which is also the report's key on a chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from loader.errors import PublishError


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise PublishError(f"{directory}: cannot write report: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PublishError(f"{path}: cannot write report: {exc.strerror}") from exc


def report_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() + ".cbor"


def spool_report(spool_dir: Path, data: bytes) -> Path:
    """Store a report in the spool; idempotent (same bytes, same name)."""
    path = spool_dir / report_name(data)
    atomic_write(path, data)
    return path
