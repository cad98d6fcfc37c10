"""X.509 chain validation, pinned to a time, with optional CRLs.

Path building and checking are OpenSSL's (through pyOpenSSL's X509Store), not ours: the
vendor chains (Intel PCK, AMD VCEK with RSA-PSS and serial 0, NVIDIA device chains) are
accepted by OpenSSL but not by stricter Web-PKI validators, and one validator for all chains
keeps one set of rules. One narrow exception, for speed on a new platform or chip: a leaf never
seen before under an issuer path OpenSSL already validated with the same exact inputs is
accepted by direct checks that are each at least as strict as OpenSSL's (certs/leaf.py); they
never reject, so every rejection is still OpenSSL's.
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

from certs import leaf as new_leaf
from certs import memo
from certs.errors import CertificateFormatError, ChainError

CrlMode = Literal["none", "leaf", "all"]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----\n"
_PEM_END = b"-----END CERTIFICATE-----\n"
_BASE64_LINES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"
MAX_CERT_BYTES = 256 * 1024


_CERTS: memo.Lru[bytes, tuple[x509.Certificate, ...]] = memo.cache()
_PEM_BLOCKS: memo.Lru[bytes, x509.Certificate] = memo.cache()
"""One certificate per exact PEM block: a new PCK chain shares its CA blocks with the chains before."""
_CRLS: memo.Lru[bytes, x509.CertificateRevocationList] = memo.cache()
_DER: memo.Lru[int, tuple[object, bytes]] = memo.cache(4 * memo.DEFAULT_SIZE)
_PATHS: memo.Lru[memo.Key, tuple[tuple[x509.Certificate, ...], memo.Windows]] = memo.cache()
_ISSUER_PATHS: memo.Lru[memo.Key, new_leaf.IssuerPath] = memo.cache()
"""Issuer paths (the validated chain less its leaf) by everything but the leaf (certs/leaf.py)."""


def _der(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    """The DER of a certificate or CRL: remembered for objects this module loaded or saw.

    Keyed by the object's id, holding the object itself, so the id cannot be reused by another
    object while the entry exists; the entry is used only for that very object (`is`)."""
    known = _DER.get(id(obj))
    if known is not None and known[0] is obj:
        return known[1]
    der = obj.public_bytes(serialization.Encoding.DER)
    _DER.put(id(obj), (obj, der))
    return der


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
    """Certificates from a PEM bundle (any number) or one DER certificate.

    Parsed once per exact byte string (bounded LRU): certificates are immutable objects."""
    data = bytes(data)
    known = _CERTS.get(data)
    if known is not None:
        return list(known)
    certs = _by_block(data, what) or _parse_certificates(data, what)
    for cert in certs:
        _der(cert)
    _CERTS.put(data, tuple(certs))
    return certs


def _by_block(data: bytes, what: str) -> list[x509.Certificate] | None:
    """A bundle that is exactly canonical PEM blocks (LF), each parsed once per exact block bytes;
    None for any other form (the whole bundle is then parsed as given)."""
    if len(data) > MAX_CERT_BYTES or not data.startswith(_PEM_BEGIN):
        return None
    bodies = data.split(_PEM_END)
    if bodies.pop() != b"" or any(
        not body.startswith(_PEM_BEGIN) or body[len(_PEM_BEGIN) :].translate(None, _BASE64_LINES)
        for body in bodies
    ):
        return None
    certs = []
    for block in (body + _PEM_END for body in bodies):
        cert = _PEM_BLOCKS.get(block)
        if cert is None:
            (cert,) = _parse_certificates(block, what)
            _der(cert)
            _PEM_BLOCKS.put(block, cert)
        certs.append(cert)
    return certs


def _parse_certificates(data: bytes, what: str) -> list[x509.Certificate]:
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
    """A PEM or DER CRL, parsed once per exact byte string (bounded LRU)."""
    data = bytes(data)
    known = _CRLS.get(data)
    if known is not None:
        return known
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CertificateFormatError(f"{what}: not a PEM or DER CRL ({exc})") from exc
    _der(crl)
    _CRLS.put(data, crl)
    return crl


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

    A success is remembered under the exact DER of every certificate and CRL given and the
    mode (certs/memo.py), and reused only while every certificate of the path it built and
    every CRL given is valid at `at`; otherwise, and for every failure, OpenSSL decides again.
    The issuer path of a success is remembered too (without the leaf): a new leaf under it is
    accepted by certs/leaf.py's direct checks where they all hold, else OpenSSL decides.
    """
    root_list = list(roots)
    if not root_list:
        raise ChainError("no trust anchor given")
    if at.tzinfo is None:
        raise ValueError("verify_chain: `at` must be timezone-aware")
    used_crls = tuple(crls) if crl_mode != "none" else ()
    above = (
        crl_mode,
        *(b"i" + _der(c) for c in intermediates),
        *(b"r" + _der(c) for c in root_list),
        *(b"c" + _der(c) for c in used_crls),
    )
    key = (_der(leaf), *above)
    known = _PATHS.get(key)
    if known is not None and known[1].hold_at(at):
        return list(known[0])
    chain = _directly_under_known_issuers(leaf, above, at)
    if chain is None:
        chain = _openssl_verify(leaf, list(intermediates), root_list, at, used_crls, crl_mode)
        issuers = new_leaf.IssuerPath.of(
            chain[1:],
            given=[*intermediates, *root_list],
            crls=used_crls,
            check_crl=crl_mode != "none",
            der=_der,
        )
        if issuers is not None:
            _ISSUER_PATHS.put(above, issuers)
    _PATHS.put(key, (tuple(chain), memo.Windows.of(chain, used_crls)))
    return chain


def _directly_under_known_issuers(
    leaf: x509.Certificate, above: memo.Key, at: dt.datetime
) -> list[x509.Certificate] | None:
    """[leaf, *issuer path] where OpenSSL validated that issuer path with these exact inputs and
    `leaf` meets certs/leaf.py's conditions at `at`; None where OpenSSL must decide."""
    issuers = _ISSUER_PATHS.get(above)
    if issuers is None:
        return None
    with serial_warnings_quiet():
        ok = new_leaf.accepted(leaf, issuers, at)
    return [leaf, *issuers.path] if ok else None


def _openssl_verify(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    root_list: list[x509.Certificate],
    at: dt.datetime,
    crls: Sequence[x509.CertificateRevocationList],
    crl_mode: CrlMode,
) -> list[x509.Certificate]:
    from OpenSSL import crypto

    store = crypto.X509Store()
    for root in root_list:
        store.add_cert(_to_openssl(root))
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
        given = {_der(c): c for c in (leaf, *intermediates, *root_list)}
        verified = [c.to_cryptography() for c in chain]
        return [given.get(_der(c), c) for c in verified]
