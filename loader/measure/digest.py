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

Speed and memory: files are read with `readv` into one preallocated CHUNK-sized buffer per
thread (hashlib releases the GIL while hashing), so a large file hashes at single-core speed.
The files of a directory are hashed by a pool of threads, one file per thread at a time; the
walking thread opens each file (descriptor-relative, O_NOFOLLOW) and hands the open descriptor
over through a bounded queue. Memory is therefore bounded by workers x CHUNK plus the listing
(one line per file), whatever the size of the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from loader.errors import InputError

CHUNK = 1 << 20
MAX_WORKERS = 8
_FORBIDDEN_IN_NAMES = (b"\\", b"\n", b"\r")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_local = threading.local()


class Meter(Protocol):
    """Receives the number of bytes hashed as they are hashed (see loader.measure.progress)."""

    def add(self, n: int) -> None: ...


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


def default_workers() -> int:
    """Threads for hashing the files of a directory: the CPUs this process may use, capped."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


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


def _buffer() -> tuple[bytearray, memoryview]:
    """This thread's read buffer: one per thread, reused for every file it hashes."""
    pair = getattr(_local, "buffer", None)
    if pair is None:
        buf = bytearray(CHUNK)
        pair = _local.buffer = (buf, memoryview(buf))
    return pair


def hash_fd(
    fd: int, sink: int | None = None, meter: Meter | None = None, *, shown: str | Path = "input"
) -> tuple[bytes, int]:
    """SHA-256 and length of everything readable from `fd`, optionally copied to `sink`.

    Each byte is read once into this thread's buffer, hashed, then written to `sink`
    (an unbuffered FileIO over `fd`: one read(2) per chunk, no extra copy).
    """
    _advise_sequential(fd)
    with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
        return hash_stream(f, sink, meter, shown=shown)


def hash_stream(
    f: BinaryIO,
    sink: int | None = None,
    meter: Meter | None = None,
    *,
    limit: int | None = None,
    shown: str | Path = "input",
) -> tuple[bytes, int]:
    """Like hash_fd for a file object (e.g. a tar member); reads at most `limit` bytes."""
    h = hashlib.sha256()
    _, view = _buffer()
    total = 0
    try:
        while limit is None or total < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - total)
            n = f.readinto(view[:want])
            if not n:
                break
            chunk = view[:n]
            h.update(chunk)
            if sink is not None:
                _write_all(sink, chunk)
            total += n
            if meter is not None:
                meter.add(n)
    except OSError as exc:
        raise InputError(f"{shown}: read or write failed after {total} bytes: {exc.strerror}") from exc
    return h.digest(), total


def _advise_sequential(fd: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def hash_file(path: Path, meter: Meter | None = None) -> tuple[bytes, int]:
    fd = open_regular(path, shown=path)
    try:
        return hash_fd(fd, meter=meter, shown=path)
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
    """Yield the regular files under `dir_fd` (opened on `root`), refusing everything else.

    A yielded TreeFile's `dir_fd` is valid until the generator resumes past its directory.
    """
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


FileJob = Callable[[bytes, int], tuple[bytes, int]]
"""Measures one file of a tree, given its "./<path>" and an open descriptor the caller closes."""


def measure_tree(root: Path, job: FileJob, *, workers: int | None = None) -> Digest:
    """Run `job` on every regular file under `root` on a thread pool; return the tree's digest.

    The walk (and every open) happens in the calling thread, descriptor-relative and with
    O_NOFOLLOW; workers only read from descriptors they are handed. At most 2 x workers
    descriptors are open at once. The first error stops the walk and is raised once every
    worker has finished.
    """
    workers = default_workers() if workers is None else max(1, workers)
    top = open_tree(root)
    try:
        serial = workers == 1
        lines = _measure_serial(root, top, job) if serial else _TreePool(root, job, workers).run(top)
    finally:
        os.close(top)
    total = sum(size for _, _, size in lines)
    listing = [(relpath, line) for relpath, line, _ in lines]
    return Digest("directory", format_digest(directory_digest(listing, root)), total, len(listing))


def _open_entry(root: Path, entry: TreeFile) -> int:
    return open_regular(entry.name, dir_fd=entry.dir_fd, shown=root / os.fsdecode(entry.relpath[2:]))


def _measure_serial(root: Path, top: int, job: FileJob) -> list[tuple[bytes, bytes, int]]:
    lines = []
    for entry in walk_tree(root, top):
        fd = _open_entry(root, entry)
        try:
            raw, size = job(entry.relpath, fd)
        finally:
            os.close(fd)
        lines.append((entry.relpath, listing_line(raw, entry.relpath), size))
    return lines


class _TreePool:
    """Worker threads fed open descriptors through a bounded queue."""

    def __init__(self, root: Path, job: FileJob, workers: int) -> None:
        self.root, self.job, self.workers = root, job, workers
        self.queue: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=2 * workers)
        self.lock = threading.Lock()
        self.lines: list[tuple[bytes, bytes, int]] = []
        self.error: BaseException | None = None
        self.failed = threading.Event()

    def run(self, top: int) -> list[tuple[bytes, bytes, int]]:
        threads = [
            threading.Thread(target=self._work, name=f"hash-{i}", daemon=True) for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        try:
            self._feed(top)
        except BaseException as exc:
            self._fail(exc)
        finally:
            for _ in threads:
                self.queue.put(None)
            for t in threads:
                t.join()
        if self.error is not None:
            raise self.error
        return self.lines

    def _feed(self, top: int) -> None:
        for entry in walk_tree(self.root, top):
            if self.failed.is_set():
                return
            self.queue.put((entry.relpath, _open_entry(self.root, entry)))

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.failed.set()

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            relpath, fd = item
            try:
                if not self.failed.is_set():
                    raw, size = self.job(relpath, fd)
                    with self.lock:
                        self.lines.append((relpath, listing_line(raw, relpath), size))
            except BaseException as exc:
                self._fail(exc)
            finally:
                os.close(fd)


def digest_path(path: Path, *, workers: int | None = None, meter: Meter | None = None) -> Digest:
    """Measure a file or a directory in place."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{path}: is a symbolic link; inputs must be regular files or directories")
    if stat.S_ISREG(st.st_mode):
        raw, size = hash_file(path, meter)
        return Digest("file", format_digest(raw), size, 1)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is not a regular file or directory")

    def job(relpath: bytes, fd: int) -> tuple[bytes, int]:
        return hash_fd(fd, meter=meter, shown=path / os.fsdecode(relpath[2:]))

    return measure_tree(path, job, workers=workers)
