"""X.509 chain validation, pinned to a time, with optional CRLs.

Path building and checking are OpenSSL's (through pyOpenSSL's X509Store), not ours: the
vendor chains (Intel PCK, AMD VCEK with RSA-PSS and serial 0, NVIDIA device chains) are
accepted by OpenSSL but not by stricter Web-PKI validators, and one validator for all chains
keeps one set of rules.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from certs.errors import CertificateFormatError, ChainError

CrlMode = Literal["none", "leaf", "all"]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
MAX_CERT_BYTES = 256 * 1024


# cryptography warns (on parsing, and on each read of the serial) about serial numbers below 1,
# which RFC 5280 forbids and AMD's VCEKs carry (serial 0). Only that warning is silenced.
_SERIAL_WARNING = r"Parsed a serial number which wasn't positive"


@contextlib.contextmanager
def serial_warnings_quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SERIAL_WARNING, category=CryptographyDeprecationWarning)
        yield


def quiet_serial_warnings_globally() -> None:
    """For the command line: a serial-0 vendor certificate is read again later (chain building,
    `--json` claims), so the one warning is filtered for the whole process, and nothing else."""
    warnings.filterwarnings("ignore", message=_SERIAL_WARNING, category=CryptographyDeprecationWarning)


def load_certificates(data: bytes, *, what: str = "certificates") -> list[x509.Certificate]:
    """Certificates from a PEM bundle (any number) or one DER certificate."""
    if len(data) > MAX_CERT_BYTES:
        raise CertificateFormatError(f"{what}: {len(data)} bytes, more than {MAX_CERT_BYTES}")
    try:
        with serial_warnings_quiet():  # AMD VCEKs carry serial number 0; OpenSSL accepts them
            if _PEM_CERT in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
            for cert in certs:
                # cryptography parses these lazily: a malformed one would raise ValueError
                # later, wherever a caller first reads it. Parse them here, once.
                _ = cert.subject, cert.issuer, cert.extensions, cert.public_key()
    except (
        ValueError,
        UnsupportedAlgorithm,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        raise CertificateFormatError(f"{what}: not a PEM bundle or DER certificate ({exc})") from exc
    if not certs:
        raise CertificateFormatError(f"{what}: no certificate found")
    return certs


def load_crl(data: bytes, *, what: str = "CRL") -> x509.CertificateRevocationList:
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CertificateFormatError(f"{what}: not a PEM or DER CRL ({exc})") from exc


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _to_openssl(cert: x509.Certificate):  # type: ignore[no-untyped-def]
    from OpenSSL import crypto

    return crypto.X509.from_cryptography(cert)


def verify_chain(
    leaf: x509.Certificate,
    *,
    intermediates: Sequence[x509.Certificate] = (),
    roots: Iterable[x509.Certificate],
    at: dt.datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    crl_mode: CrlMode = "none",
) -> list[x509.Certificate]:
    """Validate `leaf` up to one of `roots` at time `at`; return the chain leaf-first.

    `crl_mode` "leaf" requires a valid CRL for the leaf's issuer, "all" for every issuer in
    the chain; a CRL past its nextUpdate at `at` fails the check, as OpenSSL decides.
    Raises ChainError with OpenSSL's reason and the subject of the certificate at fault.
    """
    from OpenSSL import crypto

    store = crypto.X509Store()
    root_list = list(roots)
    if not root_list:
        raise ChainError("no trust anchor given")
    for root in root_list:
        store.add_cert(_to_openssl(root))
    if at.tzinfo is None:
        raise ValueError("verify_chain: `at` must be timezone-aware")
    store.set_time(at.astimezone(dt.UTC).replace(tzinfo=None))
    if crl_mode != "none":
        for crl in crls:
            store.add_crl(crl)
        # OpenSSL ignores CRL_CHECK_ALL unless CRL_CHECK is also set: "all" without it checks nothing.
        flags = crypto.X509StoreFlags.CRL_CHECK
        if crl_mode == "all":
            flags |= crypto.X509StoreFlags.CRL_CHECK_ALL
        store.set_flags(flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ctx = crypto.X509StoreContext(
                store, _to_openssl(leaf), chain=[_to_openssl(c) for c in intermediates]
            )
            chain = ctx.get_verified_chain()
        except crypto.X509StoreContextError as exc:
            bad = exc.certificate.to_cryptography().subject.rfc4514_string() if exc.certificate else "?"
            raise ChainError(f"{exc.args[0] if exc.args else exc} (certificate {bad})") from exc
        except crypto.Error as exc:
            # cryptography parses certificates lazily; OpenSSL may still refuse one (bad UTF8String...).
            raise ChainError(f"OpenSSL cannot load a certificate of the chain: {exc}") from exc
        return [c.to_cryptography() for c in chain]
