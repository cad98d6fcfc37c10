"""What a staging directory is stored on, from statfs(2): memory, or something that persists.

Only the file-system magic number is read. tmpfs and ramfs keep file data in the CVM's memory
(encrypted by the TEE), so releasing their pages is the wipe; anything else may persist data
after an unlink and is overwritten first. Staging encrypted under an ephemeral key (dm-crypt
with a key made at boot) cannot be recognised here: configure `wipe = "unlink"` for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from loader.errors import InputError

MEMORY_BACKED = frozenset({"tmpfs", "ramfs"})
_NAMES = {
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x794C7630: "overlayfs",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x6969: "nfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
}


class _StatFs(ctypes.Structure):
    # struct statfs begins with f_type (__fsword_t, a C long); the rest is read into padding.
    _fields_ = (("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def filesystem(path: Path) -> str:
    """The file-system type of `path`: a name for the known ones, else "0x<magic>"."""
    buf = _StatFs()
    if _libc().statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise InputError(f"{path}: cannot tell its file system (statfs): {os.strerror(err)}")
    magic = buf.f_type & 0xFFFFFFFF
    return _NAMES.get(magic, f"0x{magic:x}")


def is_memory_backed(name: str) -> bool:
    return name in MEMORY_BACKED
