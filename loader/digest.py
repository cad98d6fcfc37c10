"""Digests of files and directories, replayable with coreutils.

file: SHA-256 of its bytes (what `sha256sum FILE` prints).
directory: SHA-256 of the text that, run inside it,
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
prints: one "<hex>  ./<path>\\n" line per regular file, sorted by the bytes of "./<path>".

Trees are walked with directory file descriptors and O_NOFOLLOW, so a symlink swapped in after
the walk cannot redirect a read outside the root. Symlinks, devices, fifos and sockets are
refused, as are names that sha256sum would escape (backslash, newline, carriage return), so the
coreutils pipeline always prints exactly the text hashed here. An empty directory is refused:
`xargs` would run `sha256sum` on standard input and the replay would hash "-".
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loader.errors import InputError

CHUNK = 1 << 20
_FORBIDDEN_IN_NAMES = (b"\\", b"\n", b"\r")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def format_digest(raw: bytes) -> str:
    return "sha256:" + raw.hex()


def parse_digest(text: object, where: str) -> str:
    """Validate a `sha256:<64 lowercase hex>` string; return it unchanged."""
    if (
        not isinstance(text, str)
        or not text.startswith("sha256:")
        or len(text) != 71
        or any(c not in "0123456789abcdef" for c in text[7:])
    ):
        raise InputError(f"{where}: expected 'sha256:' and 64 lowercase hex digits, found {text!r}")
    return text


@dataclass(frozen=True)
class TreeFile:
    """A regular file inside a measured tree, found by a descriptor-relative walk."""

    relpath: bytes
    dir_fd: int
    name: str


def open_regular(name: str | Path, *, dir_fd: int | None = None, shown: str | Path) -> int:
    """Open a regular file for reading without following a final symlink."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the final component is a symlink
            raise InputError(f"{shown}: is a symbolic link; inputs must be regular files") from exc
        raise InputError(f"{shown}: cannot open: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{shown}: not a regular file")
    return fd


def hash_fd(fd: int, sink: int | None = None) -> tuple[bytes, int]:
    """SHA-256 and length of everything readable from `fd`, optionally copied to `sink`."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
        if sink is not None:
            _write_all(sink, view[:n])
        total += n
    return h.digest(), total


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def hash_file(path: Path) -> tuple[bytes, int]:
    fd = open_regular(path, shown=path)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def _check_name(relpath: bytes, root: Path) -> None:
    for bad in _FORBIDDEN_IN_NAMES:
        if bad in relpath:
            shown = relpath.decode("utf-8", "backslashreplace")
            raise InputError(
                f"{root}: file name {shown!r} contains {bad!r}, which sha256sum would escape; rename it"
            )


def walk_tree(root: Path, dir_fd: int, prefix: bytes = b".") -> Iterator[TreeFile]:
    """Yield the regular files under `dir_fd` (opened on `root`), refusing everything else."""
    for name in sorted(os.listdir(dir_fd)):
        relpath = prefix + b"/" + os.fsencode(name)
        shown = root / os.fsdecode(relpath[2:])
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise InputError(f"{shown}: cannot open directory: {exc.strerror}") from exc
            try:
                yield from walk_tree(root, sub, relpath)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            _check_name(relpath, root)
            yield TreeFile(relpath, dir_fd, name)
        elif stat.S_ISLNK(st.st_mode):
            raise InputError(f"{shown}: is a symbolic link; symlinks are refused in inputs")
        else:
            raise InputError(f"{shown}: is a device, fifo or socket; only regular files are measured")


def open_tree(root: Path) -> int:
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno == 40:
            raise InputError(f"{root}: is a symbolic link; inputs must be real directories") from exc
        raise InputError(f"{root}: cannot open directory: {exc.strerror}") from exc


def listing_line(digest: bytes, relpath: bytes) -> bytes:
    return digest.hex().encode() + b"  " + relpath + b"\n"


def directory_digest(lines: list[tuple[bytes, bytes]], root: Path) -> bytes:
    """Digest of sorted (relpath, line) pairs; refuses an empty tree."""
    if not lines:
        raise InputError(f"{root}: directory holds no regular file; an empty input cannot be measured")
    lines.sort(key=lambda pair: pair[0])
    return hashlib.sha256(b"".join(line for _, line in lines)).digest()


@dataclass(frozen=True)
class Digest:
    kind: str
    digest: str
    size: int
    files: int


def digest_path(path: Path) -> Digest:
    """Measure a file or a directory in place."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{path}: is a symbolic link; inputs must be regular files or directories")
    if stat.S_ISREG(st.st_mode):
        raw, size = hash_file(path)
        return Digest("file", format_digest(raw), size, 1)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is not a regular file or directory")
    top = open_tree(path)
    lines: list[tuple[bytes, bytes]] = []
    total = 0
    try:
        for entry in walk_tree(path, top):
            fd = open_regular(entry.name, dir_fd=entry.dir_fd, shown=path / os.fsdecode(entry.relpath))
            try:
                raw, size = hash_fd(fd)
            finally:
                os.close(fd)
            lines.append((entry.relpath, listing_line(raw, entry.relpath)))
            total += size
    finally:
        os.close(top)
    return Digest("directory", format_digest(directory_digest(lines, path)), total, len(lines))
