"""Staging by moving: a rename into the staging directory, sealed read-only, then hashed.

For inputs that already lie in CVM-private storage owned by the loader (downloaded or decrypted
inside the CVM): no copy, no second helping of disk. What makes the moved input as safe as a copy
(docs/staging.md has the threat model):

- before the rename, the whole tree is checked, so a refusal leaves the input where it was:
  regular files and directories only, every entry owned by the loader's uid, none writable by
  group or others, no file with a second hard link, no mount point inside, and the same file
  system as the staging directory;
- the rename puts it under the private (0700) staging directory: the original path no longer
  leads to it, and nobody but the loader can reach it by path;
- after the rename the same checks run again on what actually arrived (the source's parent may
  have swapped it in between), then everything is sealed: files 0444 (0555 when the owner could
  execute them), directories 0555, owned by the loader's uid, so the engine's own unprivileged
  identity cannot change a byte of it;
- only then is it hashed, from the staged path: what the engine reads is what was hashed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

from loader.errors import InputError
from loader.measure.digest import Digest, Meter, digest_path

log = logging.getLogger(__name__)

FILE_MODE, EXEC_MODE, DIR_MODE = 0o444, 0o555, 0o555


def move_input(src: Path, dest: Path, label: str, *, workers: int | None, meter: Meter | None) -> Digest:
    """Rename `src` to `dest` (which must not exist), seal it read-only, and measure it there."""
    uid = os.geteuid()
    _check_tree(src, uid, label, shown=src)
    _same_filesystem(src, dest.parent, label)
    if os.path.lexists(dest):
        raise InputError(f"{dest}: {label}: staging destination already exists")
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise InputError(
                f"{src}: {label}: staging 'move' needs the staging directory {dest.parent} on the same "
                "file system and mount, found another mount; use 'copy'"
            ) from exc
        raise InputError(f"{src}: {label}: cannot move into staging: {exc.strerror}") from exc
    try:
        _check_tree(dest, uid, label, shown=src)
        _seal(dest)
        return digest_path(dest, workers=workers, meter=meter)
    except InputError:
        _put_back(dest, src)
        raise


def _same_filesystem(src: Path, staging: Path, label: str) -> None:
    here, there = os.lstat(src).st_dev, os.stat(staging).st_dev
    if here != there:
        raise InputError(
            f"{src}: {label}: staging 'move' needs the input on the staging directory's file system "
            f"(device {there:#x}), found device {here:#x}; use 'copy'"
        )


def _refuse(path: Path, label: str, found: str) -> InputError:
    return InputError(
        f"{path}: {label}: staging 'move' needs loader-owned regular files and directories "
        f"(uid {os.geteuid()}, not group/other-writable, one link, one file system), found {found}"
    )


def _check_entry(path: Path, st: os.stat_result, uid: int, dev: int, label: str) -> None:
    kind = stat.S_IFMT(st.st_mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(path, label, "a symbolic link" if kind == stat.S_IFLNK else "a special file")
    if st.st_uid != uid:
        raise _refuse(path, label, f"owner uid {st.st_uid}")
    if st.st_mode & 0o022:
        raise _refuse(path, label, f"mode {stat.S_IMODE(st.st_mode):04o} (writable by group or others)")
    if st.st_dev != dev:
        raise _refuse(path, label, "a mount point inside the input")
    if kind == stat.S_IFREG and st.st_nlink != 1:
        raise _refuse(path, label, f"{st.st_nlink} hard links (another name would still lead to it)")


def _check_tree(root: Path, uid: int, label: str, *, shown: Path) -> None:
    """Every entry of `root` (shown in errors under the name `shown`) may be moved."""
    try:
        top = os.lstat(root)
        _check_entry(shown, top, uid, top.st_dev, label)
        if stat.S_ISDIR(top.st_mode):
            _check_children(root, shown, uid, top.st_dev, label)
    except OSError as exc:
        raise InputError(f"{shown}: {label}: cannot read: {exc.strerror}") from exc


def _check_children(root: Path, shown: Path, uid: int, dev: int, label: str) -> None:
    with os.scandir(root) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            _check_entry(shown / entry.name, st, uid, dev, label)
            if entry.is_dir(follow_symlinks=False):
                _check_children(Path(entry.path), shown / entry.name, uid, dev, label)


def _seal(root: Path) -> None:
    """Files 0444 (0555 when executable by the owner), directories 0555, children first."""
    try:
        if not os.path.isdir(root):
            _seal_file(root)
            return
        for dirpath, dirnames, filenames in os.walk(root, topdown=False):
            for name in filenames:
                _seal_file(Path(dirpath) / name)
            for name in dirnames:
                os.chmod(Path(dirpath) / name, DIR_MODE)
        os.chmod(root, DIR_MODE)
    except OSError as exc:
        raise InputError(f"{root}: cannot seal the moved input read-only: {exc.strerror}") from exc


def _seal_file(path: Path) -> None:
    mode = os.lstat(path).st_mode
    os.chmod(path, EXEC_MODE if mode & stat.S_IXUSR else FILE_MODE)


def _put_back(dest: Path, src: Path) -> None:
    """A refused input goes back where it came from, if that name is still free."""
    if os.path.lexists(src):
        log.error("%s: refused input left in staging (the original name is taken); it will be wiped", src)
        return
    try:
        os.rename(dest, src)
    except OSError as exc:
        log.error("%s: refused input could not be moved back (%s); it will be wiped", src, exc.strerror)
