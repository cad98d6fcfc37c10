"""OCSP (RFC 6960) for the NVIDIA GPU certificate chain: is each certificate still unrevoked?

For each certificate of the chain but the root, a request (CertID over SHA-384, as NVIDIA's
nvtrust verifier asks, and a fresh 32-byte nonce) is POSTed to the responder with the
project's bounded fetch helper (attestation/fetch.py: size and time limits, no redirects, a
cache or offline directory). A response counts only when:
  - it parses and its responseStatus is successful;
  - it is signed by the certificate's issuer itself, or by a delegated responder certificate it
    carries that the issuer signed, that has id-kp-OCSPSigning and is valid at the evaluation
    time; the ResponderID names that signer;
  - it holds a SingleResponse for exactly this CertID;
  - its nonce equals the request's (a response read from the cache or an offline directory was
    made for another request: its nonce is not compared, its validity window still is);
  - thisUpdate <= evaluation time (+ skew) <= nextUpdate, and nextUpdate is present.
Then the certificate's status is good, revoked (with the time and reason) or unknown; only good
passes. Anything else raises OcspError naming the certificate and what was wrong.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from attestation.errors import CollateralError
from attestation.evidence import Check, Result
from attestation.fetch import Document, Fetcher, FetchError
from attestation.nvidia.device import load_chain
from certs.chain import describe

DEFAULT_URL = "https://ocsp.ndis.nvidia.com/"
MAX_RESPONSE_BYTES = 64 * 1024
NONCE_LEN = 32
CLOCK_SKEW = dt.timedelta(minutes=5)
CONTENT_TYPE = "application/ocsp-request"
FILE_PREFIX = "ocsp:"
"""Collateral file names of recorded responses: ocsp:<n>, n the certificate's place, leaf 0."""
NOT_CHECKED = "certificate revocation not checked"
"""How the NVIDIA verifier's advisory begins when no OCSP answer was consulted."""


class OcspError(CollateralError):
    """An OCSP response is missing, malformed, wrongly signed, stale or for another request."""


@dataclass(frozen=True)
class CertStatus:
    subject: str
    serial: int
    status: str  # "good", "revoked", "unknown"
    this_update: dt.datetime
    next_update: dt.datetime
    source: str  # the fetch helper's: "network", "cache", "offline"
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    @property
    def good(self) -> bool:
        return self.status == "good"

    def line(self) -> str:
        when = f" at {self.revoked_at.isoformat()}" if self.revoked_at else ""
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"{self.subject}: {self.status.upper()}{when}{why}, OCSP response of "
            f"{self.this_update.isoformat()} valid until {self.next_update.isoformat()} ({self.source})"
        )


def build_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
    return builder.add_extension(x509.OCSPNonce(nonce), critical=False).build().public_bytes(Encoding.DER)


def check_chain(
    chain: Sequence[x509.Certificate],
    *,
    url: str = DEFAULT_URL,
    fetcher: Fetcher | None = None,
    at: dt.datetime,
) -> list[CertStatus]:
    """The OCSP status of every certificate of `chain` (leaf first, root last) but the root."""
    fetcher = fetcher or Fetcher()
    return [
        check_one(cert, issuer, url=url, fetcher=fetcher, at=at) for cert, issuer in itertools.pairwise(chain)
    ]


def check_one(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    url: str,
    fetcher: Fetcher,
    at: dt.datetime,
    nonce: bytes | None = None,
) -> CertStatus:
    return fetch_one(cert, issuer, url=url, fetcher=fetcher, at=at, nonce=nonce)[0]


def fetch_one(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    url: str,
    fetcher: Fetcher,
    at: dt.datetime,
    nonce: bytes | None = None,
) -> tuple[CertStatus, bytes]:
    """The certificate's status and the response's DER (to record, e.g. in a report)."""
    nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
    request = build_request(cert, issuer, nonce)
    issuer_id = hashlib.sha256(issuer.public_bytes(Encoding.DER)).hexdigest()[:32]
    key = f"nvidia/ocsp/{issuer_id}-{cert.serial_number:x}"  # one cache entry per certificate
    try:
        doc = fetcher.get(key, url, limit=MAX_RESPONSE_BYTES, post=(request, CONTENT_TYPE))
    except FetchError as exc:
        raise OcspError(f"{describe(cert)}: no OCSP response: {exc}") from exc
    return judge(doc, cert, issuer, nonce=nonce, at=at), doc.body


def fetch_chain(chain_pem: bytes, *, url: str, fetcher: Fetcher, at: dt.datetime) -> dict[str, bytes]:
    """{FILE_PREFIX + n: response DER} for every certificate of the chain but the root, each
    checked as it arrives (nonce included); a refused response raises OcspError."""
    certs = load_chain(chain_pem)
    return {
        f"{FILE_PREFIX}{n}": fetch_one(cert, issuer, url=url, fetcher=fetcher, at=at)[1]
        for n, (cert, issuer) in enumerate(itertools.pairwise(certs))
    }


def recorded_checks(chain_pem: bytes, files: Mapping[str, bytes], *, at: dt.datetime) -> tuple[Check, ...]:
    """Checks `ocsp:<n>` of responses recorded earlier (FILE_PREFIX files, e.g. in a report's
    collateral): signer, CertID and validity at `at` judged again; their nonces were the
    fetcher's and are not compared. Empty when no response is recorded."""
    if not any(name.startswith(FILE_PREFIX) for name in files):
        return ()
    certs = load_chain(chain_pem)
    checks = []
    for n, (cert, issuer) in enumerate(itertools.pairwise(certs)):
        name, body = f"{FILE_PREFIX}{n}", files.get(f"{FILE_PREFIX}{n}")
        if body is None:
            checks.append(Check(name, False, f"{describe(cert)}: no OCSP response recorded"))
            continue
        try:
            found = judge(Document(name, "", body, {}, "recorded"), cert, issuer, nonce=b"", at=at)
        except OcspError as exc:
            checks.append(Check(name, False, str(exc)))
            continue
        checks.append(Check(name, found.good, found.line()))
    return tuple(checks)


def judge(
    doc: Document, cert: x509.Certificate, issuer: x509.Certificate, *, nonce: bytes, at: dt.datetime
) -> CertStatus:
    """Check one fetched response (docstring of the module) and return the certificate's status."""
    who = describe(cert)
    try:
        response = ocsp.load_der_ocsp_response(doc.body)
    except ValueError as exc:
        raise OcspError(f"{who}: OCSP response from {doc.url} is not DER OCSPResponse ({exc})") from exc
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(
            f"{who}: OCSP responder answered {response.response_status.name}, expected SUCCESSFUL"
        )
    _check_signer(response, issuer, who, at)
    single = _single(response, cert, issuer, who)
    if doc.source == "network":  # a cached, offline or recorded copy answered another request
        _check_nonce(response, nonce, who)
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if next_update is None:
        raise OcspError(f"{who}: OCSP response has no nextUpdate; expected a bounded validity")
    if this_update > at + CLOCK_SKEW:
        raise OcspError(f"{who}: OCSP thisUpdate {this_update.isoformat()} is after {at.isoformat()}")
    if at > next_update:
        raise OcspError(
            f"{who}: OCSP response is stale: nextUpdate {next_update.isoformat()} is before {at.isoformat()}"
        )
    status = single.certificate_status
    revoked_at = single.revocation_time_utc if status == ocsp.OCSPCertStatus.REVOKED else None
    reason = single.revocation_reason.value if single.revocation_reason is not None else None
    return CertStatus(
        subject=who,
        serial=cert.serial_number,
        status=status.name.lower(),
        this_update=this_update,
        next_update=next_update,
        source=doc.source,
        revoked_at=revoked_at,
        reason=reason,
    )


def _single(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate, who: str
) -> ocsp.OCSPSingleResponse:
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
    for single in response.responses:
        if (
            single.serial_number == cert.serial_number
            and isinstance(single.hash_algorithm, hashes.SHA384)
            and single.issuer_key_hash == expected.issuer_key_hash
            and single.issuer_name_hash == expected.issuer_name_hash
        ):
            return single
    raise OcspError(
        f"{who}: the OCSP response holds no status for this certificate (serial {cert.serial_number:x})"
    )


def _check_nonce(response: ocsp.OCSPResponse, nonce: bytes, who: str) -> None:
    try:
        found = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        raise OcspError(f"{who}: the OCSP response carries no nonce; expected the request's") from None
    if found != nonce:
        raise OcspError(
            f"{who}: the OCSP response's nonce {found.hex()[:16]}… is not the request's {nonce.hex()[:16]}…"
        )


def _check_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate, who: str, at: dt.datetime) -> None:
    """Signed by the issuer, or by a delegated responder the issuer certified for OCSP signing."""
    if _names(response, issuer) and _signed_by(response, issuer):
        return
    for delegate in response.certificates:
        if not _names(response, delegate):
            continue
        if not _issued_by(delegate, issuer):
            raise OcspError(
                f"{who}: OCSP responder {describe(delegate)} is not certified by {describe(issuer)}"
            )
        if not _ocsp_signing(delegate):
            raise OcspError(f"{who}: OCSP responder {describe(delegate)} lacks id-kp-OCSPSigning")
        if not delegate.not_valid_before_utc <= at <= delegate.not_valid_after_utc:
            raise OcspError(f"{who}: OCSP responder {describe(delegate)} is not valid at {at.isoformat()}")
        if _signed_by(response, delegate):
            return
    raise OcspError(
        f"{who}: the OCSP response is not signed by {describe(issuer)} or a responder it delegated to"
    )


def _names(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    """Whether the ResponderID (byName or byKey) identifies `cert`."""
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    key_id = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]
    return response.responder_key_hash == key_id


def _verify(
    public_key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None
) -> bool:
    if algorithm is None:
        return False
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _signed_by(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    return _verify(
        signer.public_key(),
        response.signature,
        response.tbs_response_bytes,
        response.signature_hash_algorithm,
    )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    return cert.issuer == issuer.subject and _verify(
        issuer.public_key(), cert.signature, cert.tbs_certificate_bytes, cert.signature_hash_algorithm
    )


def _ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in usages


def with_revocation(
    result: Result, chain_pem: bytes, *, url: str, fetcher: Fetcher | None = None, at: dt.datetime
) -> Result:
    """`result` of NVIDIA evidence with one check per certificate of its chain but the root
    (`ocsp:<n>`, leaf first), passed only when the responder says good; the advisory that
    revocation was not checked is dropped."""
    certs = load_chain(chain_pem)
    fetcher = fetcher or Fetcher()
    checks = []
    for n, (cert, issuer) in enumerate(itertools.pairwise(certs)):
        try:
            found = check_one(cert, issuer, url=url, fetcher=fetcher, at=at)
        except OcspError as exc:
            checks.append(Check(f"ocsp:{n}", False, str(exc)))
            continue
        checks.append(Check(f"ocsp:{n}", found.good, found.line()))
    advisories = tuple(a for a in result.advisories if not a.startswith(NOT_CHECKED))
    return replace(result, checks=result.checks + tuple(checks), advisories=advisories)
