"""The operator account key: a hex secp256k1 private key in a file only its owner can read.

Policy: the file must be a regular file, at most 1 KiB, not readable or writable by group or
others (like ssh private keys); otherwise we refuse it rather than warn, because a key that
others can read may already be someone else's. The key never appears in a repr, a log line or
an exception message.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from loader.errors import ConfigError

MAX_KEY_FILE = 1024
_HEX_KEY = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class OperatorKey:
    """A private key held in memory; opaque to printing."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def secret(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return "OperatorKey(<redacted>)"

    __str__ = __repr__


def read_account_key(path: Path) -> OperatorKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open account key file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: account key file: expected a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{path}: account key file: expected mode 0600 or stricter, found "
                f"{stat.S_IMODE(info.st_mode):04o} (run: chmod 600 {path})"
            )
        raw = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_KEY_FILE:
        raise ConfigError(f"{path}: account key file: larger than {MAX_KEY_FILE} bytes")
    match = _HEX_KEY.fullmatch(raw.decode("ascii", errors="replace").strip())
    if match is None:
        raise ConfigError(f"{path}: account key file: expected 64 hex digits (optionally 0x-prefixed)")
    key = bytes.fromhex(match.group(1))
    if not 0 < int.from_bytes(key, "big") < _SECP256K1_N:
        raise ConfigError(f"{path}: account key file: not a valid secp256k1 private key")
    return OperatorKey(key)
