"""Staging: copy (or move) each input into the loader's private directory, and hash it.

Two modes, chosen per input in the configuration (docs/staging.md):
- copy (default), for storage the host or another party can still write: each byte is hashed
  as it is written to the staged copy, in one pass;
- move, for inputs already in CVM-private storage owned by the loader: a rename into staging,
  sealed read-only, then hashed from there (loader.boot.move).

The workload is started from the staged copy only. A change to the original after it was read
cannot reach the engine, and what the engine reads is exactly what was hashed: each byte is
hashed as it is written to the staged file, which nobody else can write to (0700 directory,
read-only files). The files of a directory are copied by a pool of threads (loader.measure.digest
measure_tree); an OCI engine is staged as a fresh layout holding only its verified blobs
(loader.measure.oci).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from loader.errors import InputError
from loader.measure.digest import Digest, Meter, format_digest, hash_fd, measure_tree, open_regular

ROLES = ("engine", "dataset", "config")
FORMATS = ("auto", "plain", "oci")
STAGING_MODES = ("copy", "move")
WIPE_METHODS = ("auto", "overwrite", "unlink")


@dataclass(frozen=True)
class InputSpec:
    """One input. `format` is "plain" (file or directory), "oci" (image layout or archive) or
    "auto" (OCI when the path looks like an image, see loader.measure.oci.detect); `platform` picks the
    image of a multi-platform index (default: this machine's)."""

    role: str
    name: str
    path: Path
    format: str = "plain"
    platform: str | None = None
    staging: str = "copy"

    @property
    def label(self) -> str:
        return f"{self.role} {self.name!r}"


@dataclass(frozen=True)
class Measurement:
    spec: InputSpec
    digest: Digest
    staged: Path
    seconds: float


def staged_mode(role: str) -> int:
    """Mode bits are not measured, so staging normalises them by role: every file of the engine
    0500 (readable, executable), every file of a dataset or the config 0400. A bit flipped on
    the original reaches nothing the engine sees (docs/consent.md)."""
    return 0o500 if role == "engine" else 0o400


def copy_file(
    src_fd: int, dest: Path, mode: int, meter: Meter | None = None, *, shown: str | Path = "input"
) -> tuple[bytes, int]:
    """Copy `src_fd` to a new file `dest` (read-only when done), hashing in the same pass;
    the copy is executable when `mode` has the owner-execute bit."""
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InputError(f"{dest}: cannot create staged copy: {exc.strerror}") from exc
    try:
        raw, size = hash_fd(src_fd, sink=out, meter=meter, shown=shown)
        os.fchmod(out, 0o500 if mode & stat.S_IXUSR else 0o400)
    finally:
        os.close(out)
    return raw, size


def _stage_file(src: Path, dest: Path, mode: int, meter: Meter | None) -> Digest:
    fd = open_regular(src, shown=src)
    try:
        raw, size = copy_file(fd, dest, mode, meter, shown=src)
    finally:
        os.close(fd)
    return Digest("file", format_digest(raw), size, 1)


def _stage_tree(src: Path, dest: Path, mode: int, workers: int | None, meter: Meter | None) -> Digest:
    dest.mkdir(mode=0o700)

    def job(relpath: bytes, fd: int) -> tuple[bytes, int]:
        rel = os.fsdecode(relpath[2:])
        target = dest / rel
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return copy_file(fd, target, mode, meter, shown=src / rel)

    return measure_tree(src, job, workers=workers)


def stage_input(
    spec: InputSpec, staging: Path, *, workers: int | None = None, meter: Meter | None = None
) -> Measurement:
    """Copy (or move) `spec.path` to staging/<role>/<name> and measure it."""
    dest = staging / spec.role / spec.name
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        st = os.stat(spec.path, follow_symlinks=False)
    except OSError as exc:
        raise InputError(f"{spec.path}: {spec.label}: cannot read: {exc.strerror}") from exc
    start = time.monotonic()
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{spec.path}: {spec.label} is a symbolic link; give the real path")
    if spec.format not in FORMATS:
        raise InputError(f"{spec.path}: {spec.label}: format must be one of {FORMATS}, found {spec.format!r}")
    if spec.staging not in STAGING_MODES:
        raise InputError(
            f"{spec.path}: {spec.label}: staging must be one of {STAGING_MODES}, found {spec.staging!r}"
        )
    oci_image = spec.format == "oci" or (spec.format == "auto" and _looks_like_oci(spec.path))
    if spec.staging == "move":
        if oci_image:
            raise InputError(
                f"{spec.path}: {spec.label}: staging 'move' is for plain files and directories, "
                "found an OCI image (it is staged as a fresh layout); use 'copy'"
            )
        from loader.boot.move import move_input

        digest = move_input(spec.path, dest, spec.label, workers=workers, meter=meter)
    elif oci_image:
        from loader.measure import oci

        digest = oci.stage_image(spec.path, dest, platform=spec.platform, meter=meter)
    elif stat.S_ISREG(st.st_mode):
        digest = _stage_file(spec.path, dest, staged_mode(spec.role), meter)
    elif stat.S_ISDIR(st.st_mode):
        digest = _stage_tree(spec.path, dest, staged_mode(spec.role), workers, meter)
    else:
        raise InputError(f"{spec.path}: {spec.label} is not a regular file or directory")
    return Measurement(spec, digest, dest, time.monotonic() - start)


def _looks_like_oci(path: Path) -> bool:
    from loader.measure import oci

    return oci.detect(path)


def make_private_dir(path: Path) -> Path:
    """Create a fresh 0700 staging directory; refuse to reuse an existing one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700)
    except FileExistsError as exc:
        raise InputError(f"{path}: staging directory already exists; remove it or pick another") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot create staging directory: {exc.strerror}") from exc
    return path


def wipe_method(path: Path, requested: str) -> tuple[str, str]:
    """(method, medium): "unlink" for memory-backed staging under "auto", else "overwrite";
    an explicit "overwrite" or "unlink" is used as configured. Anything unexpected (an unknown
    method, a file system statfs cannot tell) falls back to "overwrite": the wipe runs anyway."""
    from loader.boot.medium import filesystem, is_memory_backed

    try:
        medium = filesystem(path if path.exists() else path.parent)
    except InputError:
        medium = "unknown"
    if requested in ("overwrite", "unlink"):
        return requested, medium
    return ("unlink" if requested == "auto" and is_memory_backed(medium) else "overwrite"), medium


def wipe(path: Path, requested: str = "auto") -> dict[str, int | str]:
    """Release the staged tree: overwrite every file with zeros first unless the method is
    "unlink" (memory-backed staging, or staging encrypted under an ephemeral key), then remove
    it. Returns counts, the method used, the one configured and the file system found."""
    method, medium = wipe_method(path, requested)
    record: dict[str, int | str] = {"method": method, "requested": requested, "medium": medium}
    files = overwritten = 0
    if not path.exists():
        return {"files": 0, "overwritten": 0, **record}
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, 0o700)
        for name in filenames:
            files += 1
            if method == "overwrite":
                overwritten += _zero(Path(dirpath) / name)
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o700, follow_symlinks=False)
    shutil.rmtree(path)
    return {"files": files, "overwritten": overwritten, **record}


def _zero(target: Path) -> int:
    try:
        if target.is_symlink():
            return 0
        os.chmod(target, 0o600)
        size = target.stat().st_size
        with open(target, "r+b") as f:
            block = bytes(min(size, 1 << 20))
            left = size
            while left:
                left -= f.write(block[: min(left, len(block))])
            f.flush()
            os.fsync(f.fileno())
        return 1
    except OSError:
        return 0
