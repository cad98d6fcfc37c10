"""Bounded reads of the files a user names on the command line, with one-line errors."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from loader.errors import LoaderError

MAX_FILE = 64 << 20


def read_bounded(path: Path, what: str, limit: int = MAX_FILE) -> bytes:
    """The bytes of `path`, refusing more than `limit` (LoaderError names the file and `what`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    if len(data) > limit:
        raise LoaderError(f"{path}: {what} larger than {limit} bytes")
    return data


def load_ca(path: Path | None) -> list[x509.Certificate]:
    """The CA certificate(s) given with --ca, or none."""
    from certs.chain import load_certificates

    return load_certificates(read_bounded(path, "CA certificate"), what=str(path)) if path else []
