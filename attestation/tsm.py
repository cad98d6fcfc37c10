"""Client of the Linux configfs-tsm report interface (Documentation/ABI/testing/configfs-tsm).

One report = one entry directory under <root>/sys/kernel/config/tsm/report/: write `inblob`
(and options such as `privlevel`), read `outblob` (which makes the kernel ask the TEE),
read `auxblob`, then read `generation` to make sure no other writer changed the entry
between our writes and our read; remove the entry. The root path and the four file-system
operations are parameters so that tests drive the same code against a fake kernel.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from attestation.errors import AttesterFailure, AttesterUnavailable

REPORT_DIR = Path("sys/kernel/config/tsm/report")
MAX_INBLOB = 64
MAX_BLOB = 1 << 20
ATTEMPTS = 3


class ConfigfsOps(Protocol):
    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> bytes: ...
    def write(self, path: Path, data: bytes) -> None: ...


class OsOps:
    """The real file-system operations."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as f:
            return f.read(MAX_BLOB + 1)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.EIO, "short write", str(path))
        finally:
            os.close(fd)


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes
    generation: int


def report_root(root: Path) -> Path:
    return root / REPORT_DIR


def probe_provider(root: Path, ops: ConfigfsOps | None = None) -> str | None:
    """The provider name ("tdx_guest", "sev_guest"...) if configfs-tsm works here, else None."""
    ops = ops or OsOps()
    entry = report_root(root) / f"probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        ops.mkdir(entry)
    except OSError:
        return None
    try:
        return ops.read(entry / "provider").decode("ascii", "replace").strip() or None
    except OSError:
        return None
    finally:
        _remove(ops, entry)


def get_report(
    root: Path,
    inblob: bytes,
    *,
    expected_provider: str,
    privlevel: int | None = None,
    ops: ConfigfsOps | None = None,
) -> TsmReport:
    """Ask the TEE for a report over `inblob`, retrying when another writer interferes."""
    if len(inblob) > MAX_INBLOB:
        raise AttesterFailure(f"configfs-tsm: inblob is {len(inblob)} bytes, at most {MAX_INBLOB}")
    ops = ops or OsOps()
    last = ""
    for _ in range(ATTEMPTS):
        entry = report_root(root) / f"trusted-loader-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            ops.mkdir(entry)
        except FileNotFoundError as exc:
            raise AttesterUnavailable(
                f"configfs-tsm: {report_root(root)} not found (is configfs mounted and tsm_report loaded?)"
            ) from exc
        except OSError as exc:
            raise AttesterFailure(f"configfs-tsm: cannot create {entry}: {exc.strerror or exc}") from exc
        try:
            report = _one_report(ops, entry, inblob, expected_provider, privlevel)
        except _GenerationRace as race:
            last = str(race)
            continue
        finally:
            _remove(ops, entry)
        return report
    raise AttesterFailure(f"configfs-tsm: gave up after {ATTEMPTS} attempts: {last}")


class _GenerationRace(Exception):
    pass


def _one_report(
    ops: ConfigfsOps, entry: Path, inblob: bytes, expected_provider: str, privlevel: int | None
) -> TsmReport:
    provider = _read(ops, entry / "provider").decode("ascii", "replace").strip()
    if provider != expected_provider:
        raise AttesterUnavailable(f"configfs-tsm: provider is {provider!r}, expected {expected_provider!r}")
    start = _generation(ops, entry)
    writes = 0
    if privlevel is not None:
        _write(ops, entry / "privlevel", str(privlevel).encode())
        writes += 1
    _write(ops, entry / "inblob", inblob)
    writes += 1
    outblob = _read(ops, entry / "outblob")
    if not outblob:
        raise AttesterFailure(
            f"configfs-tsm: {entry}/outblob is empty: the host's quote service did not answer"
        )
    auxblob = _read_optional(ops, entry / "auxblob")
    end = _generation(ops, entry)
    if end != start + writes:
        raise _GenerationRace(
            f"generation went from {start} to {end} across {writes} write(s): another writer used {entry}"
        )
    return TsmReport(provider, outblob, auxblob, end)


def _generation(ops: ConfigfsOps, entry: Path) -> int:
    raw = _read(ops, entry / "generation").strip()
    try:
        return int(raw)
    except ValueError as exc:
        raise AttesterFailure(f"configfs-tsm: {entry}/generation is not a number: {raw[:20]!r}") from exc


def _read(ops: ConfigfsOps, path: Path) -> bytes:
    try:
        data = ops.read(path)
    except OSError as exc:
        raise AttesterFailure(f"configfs-tsm: cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_BLOB:
        raise AttesterFailure(f"configfs-tsm: {path} is larger than {MAX_BLOB} bytes")
    return data


def _read_optional(ops: ConfigfsOps, path: Path) -> bytes:
    try:
        return ops.read(path)
    except OSError:
        return b""


def _write(ops: ConfigfsOps, path: Path, data: bytes) -> None:
    try:
        ops.write(path, data)
    except OSError as exc:
        raise AttesterFailure(f"configfs-tsm: cannot write {path}: {exc.strerror or exc}") from exc


def _remove(ops: ConfigfsOps, entry: Path) -> None:
    with contextlib.suppress(OSError):
        ops.rmdir(entry)
