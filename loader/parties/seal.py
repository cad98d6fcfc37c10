"""Sealed outputs: the engine's output (and its logs) encrypted to the order owner's public key.

The loader writes one file, `output.sealed`, in the loader/parties/stream.py format. Its plaintext is a
deterministic tar (loader/parties/archive.py) holding `output/...` and `logs/...`; nothing else of the
job leaves staging in clear. Header fields (authenticated as the AAD of every chunk):
  format     "trusted-loader/sealed-output/v1"
  kem        "ECDH-P384" or "X25519" (the recipient key's type)
  recipient  SHA-256 of the recipient's SubjectPublicKeyInfo DER (32 bytes)
  epk        the loader's ephemeral public key for this file (SubjectPublicKeyInfo DER)
  job, order, run   what produced it (text)
file key = HKDF-SHA384(ECDH(ephemeral, recipient), info = "trusted-loader/seal/v1\\0" ‖
CBOR[kem, recipient, epk]); the ephemeral private key exists only while sealing.

The report records the sealed file's digest (`workload.output`), so an owner can tie the file to
the signed report; `trusted-loader output open` refuses a file sealed to another key, any
tampered, truncated or extended file, and writes the directory only once everything opened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from loader.errors import InputError, TrustError
from loader.measure.digest import format_digest
from loader.parties import archive, stream
from loader.report.partykeys import PartyKeyError, PrivateKey, PublicKey, key_id, public_from_der, spki

SEAL_FORMAT = "trusted-loader/sealed-output/v1"
_FIELDS = {"format", "kem", "recipient", "epk", "job", "order", "run"}


@dataclass(frozen=True)
class Sealed:
    path: Path
    digest: str
    size: int
    files: int
    recipient: str


def _kem(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ECDH-P384"
    if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return "X25519"
    raise TrustError(f"a {type(key).__name__} cannot receive sealed outputs; use a P-384 or X25519 key")


def _file_key(shared: bytes, kem: str, recipient: bytes, epk: bytes) -> bytes:
    info = b"trusted-loader/seal/v1\x00" + cbor2.dumps([kem, recipient, epk], canonical=True)
    return HKDF(algorithm=hashes.SHA384(), length=stream.KEY_LEN, salt=None, info=info).derive(shared)


def _agree(private: PrivateKey, public: PublicKey) -> bytes:
    if isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey):
        return private.exchange(ec.ECDH(), public)
    if isinstance(private, x25519.X25519PrivateKey) and isinstance(public, x25519.X25519PublicKey):
        return private.exchange(public)
    raise TrustError("the sealed file's key type does not match the given key")


def seal(
    sources: Sequence[tuple[str, Path]],
    recipient: PublicKey,
    out: Path,
    *,
    context: dict[str, str],
    chunk: int = stream.DEFAULT_CHUNK,
) -> Sealed:
    """Tar the (prefix, directory) sources and encrypt them to `recipient` in `out` (new file)."""
    kem = _kem(recipient)
    ephemeral: PrivateKey = (
        ec.generate_private_key(ec.SECP384R1()) if kem == "ECDH-P384" else x25519.X25519PrivateKey.generate()
    )
    epk = spki(ephemeral.public_key())
    rid = key_id(recipient)
    file_key = _file_key(_agree(ephemeral, recipient), kem, rid, epk)
    del ephemeral
    fields = {"format": SEAL_FORMAT, "kem": kem, "recipient": rid, "epk": epk, **context}
    if set(fields) != _FIELDS:
        raise ValueError("seal context must hold exactly job, order and run")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InputError(f"{out}: cannot create sealed output: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        writer = stream.encrypt_to(f, file_key, fields, chunk=chunk)
        files = archive.write_tar(sources, writer)  # type: ignore[arg-type]
        writer.close()
        os.fsync(f.fileno())
    digest, size = _digest(out)
    return Sealed(out, digest, size, files, "sha256:" + rid.hex())


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return format_digest(h.digest()), size


def read_info(path: Path) -> dict[str, object]:
    """The sealed file's header fields (unauthenticated until the file is opened)."""
    with open(path, "rb") as f:
        header = stream.read_header(f, str(path))
    _check_fields(header, str(path))
    return header.fields


def _check_fields(header: stream.Header, what: str) -> None:
    fields = header.fields
    if set(fields) != _FIELDS or fields["format"] != SEAL_FORMAT:
        raise TrustError(f"{what}: not a {SEAL_FORMAT} file")
    if not isinstance(fields["recipient"], bytes) or not isinstance(fields["epk"], bytes):
        raise TrustError(f"{what}: header recipient and epk must be byte strings")


def open_sealed(path: Path, key: PrivateKey, dest: Path, *, expected_digest: str | None = None) -> int:
    """Decrypt `path` into the new directory `dest`; return the number of files written."""
    what = str(path)
    if expected_digest is not None:
        found, _ = _digest(path)
        if found != expected_digest:
            raise TrustError(f"{what}: digest {found} is not the {expected_digest} the report names")
    if dest.exists():
        raise InputError(f"{dest}: already exists; give a new directory for the opened output")
    with open(path, "rb") as f:
        header = stream.read_header(f, what)
        _check_fields(header, what)
        fields = header.fields
        mine = key_id(key.public_key())
        if fields["recipient"] != mine:
            raise TrustError(
                f"{what}: sealed to key sha256:{fields['recipient'].hex()}, not to this key "  # type: ignore[union-attr]
                f"sha256:{mine.hex()}"
            )
        if fields["kem"] != _kem(key):
            raise TrustError(f"{what}: kem {fields['kem']!r} does not fit the given key")
        try:
            peer = public_from_der(fields["epk"], f"{what}: epk")  # type: ignore[arg-type]
        except PartyKeyError as exc:
            raise TrustError(str(exc)) from None
        file_key = _file_key(_agree(key, peer), fields["kem"], mine, fields["epk"])  # type: ignore[arg-type]
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            reader = stream.PlainReader(stream.decrypt_chunks(f, file_key, header, what))
            files = archive.extract_tar(reader, tmp / "x", what, writable=True)  # type: ignore[arg-type]
            reader.drain()
            os.rename(tmp / "x", dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return files
