"""The parties' long-term keys: data owners, engine authors and order owners.

Signing keys are ECDSA P-384 (COSE ES384) or Ed25519 (COSE EdDSA); keys that receive sealed
outputs are P-384 or X25519. All are PEM files: PKCS#8 for private keys (written 0600),
SubjectPublicKeyInfo for public ones. A key is named by its key id, the SHA-256 of its
SubjectPublicKeyInfo DER, shown as `sha256:<hex>`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from loader.errors import LoaderError

MAX_KEY_BYTES = 16 << 10
KEY_TYPES = ("p384", "ed25519", "x25519")

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | x25519.X25519PublicKey


class PartyKeyError(LoaderError):
    """A key file is missing, unreadable or of a type that cannot be used here."""


def spki(public: PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public: PublicKey | bytes) -> bytes:
    """SHA-256 of the SubjectPublicKeyInfo DER (the raw 32 bytes)."""
    der = public if isinstance(public, bytes) else spki(public)
    return hashlib.sha256(der).digest()


def key_id_text(public: PublicKey | bytes) -> str:
    return "sha256:" + key_id(public).hex()


def generate(kind: str) -> PrivateKey:
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    raise PartyKeyError(f"key type: expected one of {', '.join(KEY_TYPES)}, found {kind!r}")


def _check_supported(key: object, path: Path, what: str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise PartyKeyError(f"{path}: {what}: EC keys must be on P-384, found {key.curve.name}")
        return
    if not isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | ed25519.Ed25519PublicKey
        | x25519.X25519PrivateKey
        | x25519.X25519PublicKey,
    ):
        raise PartyKeyError(
            f"{path}: {what}: expected a P-384, Ed25519 or X25519 key, found {type(key).__name__}"
        )


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise PartyKeyError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    if len(data) > MAX_KEY_BYTES:
        raise PartyKeyError(f"{path}: {what} larger than {MAX_KEY_BYTES} bytes")
    return data


def load_private(path: Path, what: str = "private key") -> PrivateKey:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise PartyKeyError(f"{path}: {what}: not an unencrypted PEM private key ({exc})") from exc
    _check_supported(key, path, what)
    return key  # type: ignore[return-value]


def load_public(path: Path, what: str = "public key") -> PublicKey:
    """A PEM public key, or the public half of a PEM private key or certificate."""
    data = _read(path, what)
    key: object
    try:
        if b"PRIVATE KEY" in data:
            raise PartyKeyError(f"{path}: {what}: holds a private key; give the public key (.pub.pem)")
        if b"CERTIFICATE" in data:
            from cryptography import x509

            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PartyKeyError(f"{path}: {what}: not a PEM public key ({exc})") from exc
    _check_supported(key, path, what)
    return key  # type: ignore[return-value]


def public_from_der(der: bytes, what: str) -> PublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PartyKeyError(f"{what}: not a DER SubjectPublicKeyInfo ({exc})") from exc
    _check_supported(key, Path(what), "key")
    return key  # type: ignore[return-value]


def write_private(key: PrivateKey, path: Path) -> None:
    """Write a private key as PKCS#8 PEM, readable by its owner only; never overwrite."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PartyKeyError(f"{path}: cannot create private key file: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def write_public(key: PublicKey, path: Path) -> None:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        path.write_bytes(pem)
    except OSError as exc:
        raise PartyKeyError(f"{path}: cannot write public key: {exc.strerror}") from exc
