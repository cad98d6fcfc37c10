"""Chunked AEAD for data of any size: encrypted datasets and sealed outputs.

Layout of an encrypted file:
  magic   8 bytes   b"TLSTRM\\x00\\x01"
  hlen    4 bytes   big-endian length of the header, 1..16384
  header  hlen bytes, a deterministic CBOR map: the caller's fields plus
            "chunk": plaintext bytes per chunk (16 .. 16 MiB), "salt": 16 random bytes
  chunks  AES-256-GCM(key, nonce, plaintext, aad = magic ‖ hlen ‖ header): ciphertext ‖ 16-byte tag

  key   = HKDF-SHA256(ikm = the 32-byte file key, salt = header.salt, info = "trusted-loader/stream/v1")
  nonce = chunk counter (11 bytes, big-endian, from 0) ‖ last-chunk flag (1 byte: 1 final, 0 not)

Every chunk but the last holds exactly `chunk` plaintext bytes; the last holds 1..chunk bytes,
or 0 only when the whole plaintext is empty. Reordered, dropped or repeated chunks get the wrong
nonce; a file cut at a chunk boundary ends in a chunk sealed with flag 0; appended bytes turn the
true last chunk into a non-final one; any header change alters every chunk's AAD. Each chunk is
authenticated before its plaintext is released. This is the STREAM construction (Hoang,
Reyhanitabar, Rogaway, Vizár 2015) as `age` uses it: only the framing is ours, the AEAD and the
KDF are pyca `cryptography`'s.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from loader.errors import TrustError

MAGIC = b"TLSTRM\x00\x01"
MAX_HEADER = 16 << 10
DEFAULT_CHUNK = 64 << 10
MIN_CHUNK, MAX_CHUNK = 16, 16 << 20
TAG = 16
KEY_LEN = 32
SALT_LEN = 16
_INFO = b"trusted-loader/stream/v1"
_RESERVED = {"chunk", "salt"}


@dataclass(frozen=True)
class Header:
    fields: dict[str, Any]
    aad: bytes
    chunk: int
    salt: bytes


def _chunk_key(file_key: bytes, salt: bytes) -> AESGCM:
    if len(file_key) != KEY_LEN:
        raise TrustError(f"stream key must be {KEY_LEN} bytes, found {len(file_key)}")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=_INFO)
    return AESGCM(hkdf.derive(file_key))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class StreamWriter(io.RawIOBase):
    """A write-only file object; `close()` seals the final chunk. Not seekable."""

    def __init__(self, out: BinaryIO, file_key: bytes, fields: dict[str, Any], chunk: int) -> None:
        super().__init__()
        if _RESERVED & set(fields):
            raise ValueError(f"header fields {sorted(_RESERVED)} are reserved")
        if not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk size must be {MIN_CHUNK}..{MAX_CHUNK}")
        salt = os.urandom(SALT_LEN)
        header = cbor2.dumps({**fields, "chunk": chunk, "salt": salt}, canonical=True)
        if len(header) > MAX_HEADER:
            raise ValueError("stream header too large")
        self._aad = MAGIC + struct.pack(">I", len(header)) + header
        self._out, self._chunk, self._counter = out, chunk, 0
        self._aead = _chunk_key(file_key, salt)
        self._buf = bytearray()
        self.plaintext_bytes = 0
        out.write(self._aad)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._buf += view
        self.plaintext_bytes += len(view)
        while len(self._buf) > self._chunk:
            self._seal(bytes(self._buf[: self._chunk]), last=False)
            del self._buf[: self._chunk]
        return len(view)

    def _seal(self, plain: bytes, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._counter, last), plain, self._aad))
        self._counter += 1

    def close(self) -> None:
        if not self.closed:
            self._seal(bytes(self._buf), last=True)
            self._buf.clear()
            self._out.flush()
        super().close()


def encrypt_to(
    out: BinaryIO, file_key: bytes, fields: dict[str, Any], *, chunk: int = DEFAULT_CHUNK
) -> StreamWriter:
    """Write the header to `out` and return a writer for the plaintext."""
    return StreamWriter(out, file_key, fields, chunk)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        part = f.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_header(f: BinaryIO, what: str) -> Header:
    start = _read_exact(f, len(MAGIC) + 4)
    if len(start) < len(MAGIC) + 4 or start[: len(MAGIC)] != MAGIC:
        raise TrustError(f"{what}: not a trusted-loader encrypted file (magic TLSTRM v1 missing)")
    (hlen,) = struct.unpack(">I", start[len(MAGIC) :])
    if not 0 < hlen <= MAX_HEADER:
        raise TrustError(f"{what}: header length {hlen} outside 1..{MAX_HEADER}")
    raw = _read_exact(f, hlen)
    if len(raw) != hlen:
        raise TrustError(f"{what}: file ends inside the header")
    try:
        fields = cbor2.loads(raw)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise TrustError(f"{what}: header is not well-formed CBOR ({exc})") from None
    if not isinstance(fields, dict) or cbor2.dumps(fields, canonical=True) != raw:
        raise TrustError(f"{what}: header must be a map in deterministic CBOR")
    chunk, salt = fields.pop("chunk", None), fields.pop("salt", None)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise TrustError(f"{what}: header.chunk must be an integer in {MIN_CHUNK}..{MAX_CHUNK}")
    if not isinstance(salt, bytes) or len(salt) != SALT_LEN:
        raise TrustError(f"{what}: header.salt must be {SALT_LEN} bytes")
    return Header(fields, start + raw, chunk, salt)


def decrypt_chunks(f: BinaryIO, file_key: bytes, header: Header, what: str) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raise TrustError on any tampering or truncation."""
    aead = _chunk_key(file_key, header.salt)
    size = header.chunk + TAG
    counter = 0
    block = _read_exact(f, size)
    while True:
        ahead = _read_exact(f, 1) if len(block) == size else b""
        last = not ahead
        if len(block) < TAG:
            raise TrustError(f"{what}: chunk {counter} is truncated ({len(block)} bytes)")
        try:
            plain = aead.decrypt(_nonce(counter, last), block, header.aad)
        except InvalidTag:
            raise TrustError(
                f"{what}: chunk {counter} does not authenticate (tampered, truncated, or the wrong key)"
            ) from None
        if last and not plain and counter:
            raise TrustError(f"{what}: empty final chunk after chunk {counter - 1} (not canonical)")
        yield plain
        if last:
            return
        counter += 1
        block = ahead + _read_exact(f, size - 1)


class PlainReader(io.RawIOBase):
    """A read-only file object over `decrypt_chunks`, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buf and not self._done:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                self._done = True
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def drain(self) -> int:
        """Read to the end (authenticating the rest); return the number of bytes left over."""
        left = len(self._buf)
        self._buf = b""
        for part in self._chunks:
            left += len(part)
        self._done = True
        return left
