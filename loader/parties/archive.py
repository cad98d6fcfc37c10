"""Deterministic tar archives of a directory, and a strict extractor for them.

Written: regular files only, in the byte order of their paths (the directory-digest order),
POSIX pax format, mode 0644 or 0755 (from the owner's execute bit), mtime 0, uid/gid 0, no user
or group names. Symlinks, devices, fifos and sockets are refused (the same fd-relative walk as
loader/measure/digest.py), so the same tree always gives the same bytes.

Read: only regular files and directories; each name relative, with no empty, "." or ".."
component, no backslash or control characters, not seen before; files are created with
O_EXCL|O_NOFOLLOW under a directory this process just created, so nothing in the archive can
write outside it or through a link.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from loader.errors import InputError, TrustError
from loader.measure.digest import open_regular, open_tree, walk_tree

MAX_MEMBERS = 1_000_000
MAX_NAME = 4096
_COPY = 1 << 20


class _FdReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int = -1) -> bytes:
        return os.read(self.fd, n if n >= 0 else 1 << 30)


def write_tar(sources: Sequence[tuple[str, Path]], out: BinaryIO) -> int:
    """Write the regular files under each (prefix, directory) in turn; return the file count.

    Member names are `prefix` + the path relative to the directory ("" for none).
    """
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for prefix, src in sources:
            count += _add_tree(tar, prefix, src)
    return count


def _add_tree(tar: tarfile.TarFile, prefix: str, src: Path) -> int:
    top = open_tree(src)
    count = 0
    try:
        for entry in walk_tree(src, top):
            rel = os.fsdecode(entry.relpath[2:])
            fd = open_regular(entry.name, dir_fd=entry.dir_fd, shown=src / rel)
            try:
                st = os.fstat(fd)
                info = tarfile.TarInfo(prefix + rel)
                info.size = st.st_size
                info.mode = 0o755 if st.st_mode & 0o100 else 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, _FdReader(fd))  # type: ignore[arg-type]
            except OSError as exc:
                raise InputError(f"{src / rel}: cannot read: {exc.strerror}") from exc
            finally:
                os.close(fd)
            count += 1
    finally:
        os.close(top)
    return count


def _safe_parts(name: str, what: str) -> list[str]:
    if not name or len(name) > MAX_NAME or name.startswith("/"):
        raise TrustError(f"{what}: archive member name {name[:80]!r} is empty, too long or absolute")
    if any(c in name for c in "\\\0") or any(ord(c) < 32 for c in name):
        raise TrustError(f"{what}: archive member name {name[:80]!r} has a forbidden character")
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise TrustError(f"{what}: archive member name {name[:80]!r} is not a plain relative path")
    return parts


def extract_tar(
    src: BinaryIO, dest: Path, what: str, *, writable: bool = False, executable: bool | None = None
) -> int:
    """Extract into `dest`, which must not exist yet; return the number of files.

    Files are made read-only (0400/0500) for staging, or 0600/0700 when `writable`. The
    owner-execute bit follows the member's, unless `executable` fixes it for every file (staging
    normalises modes by role, docs/consent.md: they are not measured).
    """
    dest.mkdir(mode=0o700)
    seen: set[str] = set()
    files = 0
    try:
        with tarfile.open(fileobj=src, mode="r|") as tar:
            for info in tar:
                if len(seen) >= MAX_MEMBERS:
                    raise TrustError(f"{what}: more than {MAX_MEMBERS} archive members")
                parts = _safe_parts(info.name, what)
                key = "/".join(parts)
                if key in seen:
                    raise TrustError(f"{what}: archive member {key!r} appears twice")
                seen.add(key)
                target = dest.joinpath(*parts)
                if info.isdir():
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                if not info.isreg():
                    raise TrustError(f"{what}: archive member {key!r} is not a regular file or directory")
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _write_member(tar, info, target, what, 0o200 if writable else 0, executable)
                files += 1
    except tarfile.TarError as exc:
        raise TrustError(f"{what}: not a valid tar archive ({exc})") from None
    except OSError as exc:
        raise TrustError(f"{what}: cannot extract: {exc.strerror} ({exc.filename})") from None
    return files


def _write_member(
    tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path, what: str, extra: int, executable: bool | None
) -> None:
    reader = tar.extractfile(info)
    if reader is None:
        raise TrustError(f"{what}: archive member {info.name!r} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o600)
    except OSError as exc:
        raise TrustError(f"{what}: cannot create {info.name!r}: {exc.strerror}") from None
    try:
        while block := reader.read(_COPY):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
        run = bool(info.mode & 0o100) if executable is None else executable
        os.fchmod(fd, (0o500 if run else 0o400) | extra)
    finally:
        os.close(fd)
