"""Enrollment against the attestation-based CA, with the standard library only (urllib).

The loader asks the CA for a nonce, collects evidence bound to its key and that nonce, sends a
CSR with the evidence, and checks what comes back: the leaf certifies its own key, carries the
nonce it used, and chains to the CA (the pinned one when configured). Network failures and
"busy" answers are retried with exponential backoff, each attempt with a fresh nonce (a nonce
may have been spent by a request whose answer was lost). A refusal is final: the CA's reason is
raised as EnrollmentRefused and the loader must not run the workload.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.evidence import Evidence
from certs import jsonlimits
from certs.ca import wire
from certs.chain import load_certificates, verify_chain
from certs.csr import build_csr
from certs.errors import CertsError
from certs.extensions import decode_evidence_extension

log = logging.getLogger("trusted-loader.enroll")

MAX_RESPONSE_BYTES = 1 << 20
RETRYABLE_CODES = frozenset(
    {"busy", "rate_limited", "nonce_expired", "nonce_wrong_replica", "ca_expired", "internal"}
)


class EnrollmentError(Exception):
    """Enrollment did not produce a certificate."""


class EnrollmentRefused(EnrollmentError):
    """The CA examined the request and refused it; `code` and `reason` come from the CA."""

    def __init__(self, code: str, reason: str, details: Sequence[str] = ()) -> None:
        super().__init__(f"CA refused the certificate ({code}): {reason}")
        self.code, self.reason, self.details = code, reason, tuple(details)


class CaUnavailable(EnrollmentError):
    """The CA could not be reached or kept failing transiently until retries ran out."""


class _Transient(Exception):
    pass


@dataclass(frozen=True)
class Enrollment:
    chain: tuple[x509.Certificate, ...]
    """Leaf first, then the CA certificate: what goes into the report's x5chain."""
    nonce: bytes
    evidence: tuple[Evidence, ...]

    def chain_der(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.chain]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


class CaClient:
    """One CA endpoint. `url` is the base, e.g. http://ca.internal:8443."""

    def __init__(self, url: str, *, timeout: float = 10.0, cafile: str | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise EnrollmentError(f"ca url: expected http:// or https://, found {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        handlers: list[Any] = [_NoRedirect()]
        if cafile:
            import ssl

            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cafile)))
        self._opener = urllib.request.build_opener(*handlers)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        # The scheme was checked in __init__ (http or https only).
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.status, _read_bounded(resp)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _read_bounded(exc)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Transient(f"{method} {self.url}{path}: {reason}") from exc

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        status, raw = self._call(method, path, body)
        try:
            doc = jsonlimits.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if status >= 500:
                raise _Transient(f"{method} {path}: HTTP {status} without a JSON body")
            raise EnrollmentError(f"{method} {self.url}{path}: HTTP {status}, expected a JSON object")
        if status >= 400:
            code, reason = wire.error_fields(doc)
            if status >= 500 or code in RETRYABLE_CODES:
                raise _Transient(f"CA answered {status} {code}: {reason}")
            details = doc.get("details") if isinstance(doc.get("details"), list) else []
            raise EnrollmentRefused(code, reason, [str(d) for d in details])
        return status, doc

    def nonce(self) -> bytes:
        _, doc = self._json("GET", "/v1/nonce")
        try:
            nonce = wire.b64decode(doc.get("nonce"), "nonce")
        except CertsError as exc:
            raise EnrollmentError(f"CA nonce response: {exc}") from exc
        if len(nonce) != 32:
            raise EnrollmentError(f"CA nonce response: expected 32 bytes, found {len(nonce)}")
        return nonce

    def ca_certificate(self) -> x509.Certificate:
        """The CA certificate as the service publishes it (GET /v1/ca.pem)."""
        status, raw = self._call("GET", "/v1/ca.pem")
        if status != 200:
            raise EnrollmentError(f"GET {self.url}/v1/ca.pem: HTTP {status}")
        try:
            return load_certificates(raw, what=f"{self.url}/v1/ca.pem")[0]
        except CertsError as exc:
            raise EnrollmentError(str(exc)) from exc

    def submit(self, csr_pem: bytes, nonce: bytes, evidence: Sequence[Evidence]) -> list[x509.Certificate]:
        status, doc = self._json("POST", "/v1/certificates", wire.encode_request(csr_pem, nonce, evidence))
        chain = doc.get("chain")
        if status != 201 or not isinstance(chain, str):
            raise EnrollmentError(f"CA answered HTTP {status} without a certificate chain")
        try:
            return load_certificates(chain.encode("ascii"), what="CA response chain")
        except (CertsError, UnicodeEncodeError) as exc:
            raise EnrollmentError(str(exc)) from exc


def _read_bounded(resp: Any) -> bytes:
    data: bytes = resp.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise EnrollmentError(f"CA response larger than {MAX_RESPONSE_BYTES} bytes")
    return data


def check_issued(
    chain: Sequence[x509.Certificate],
    *,
    spki_der: bytes,
    nonce: bytes,
    ca_cert: x509.Certificate | None,
    at: dt.datetime,
) -> None:
    """Raise EnrollmentError unless `chain` certifies our key for this enrollment."""
    if len(chain) < 2:
        raise EnrollmentError(f"CA returned {len(chain)} certificate(s); expected the leaf and the CA")
    leaf = chain[0]
    leaf_spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_spki != spki_der:
        raise EnrollmentError("CA returned a certificate for a different key")
    try:
        bundle = decode_evidence_extension(leaf)
    except CertsError as exc:
        raise EnrollmentError(f"issued certificate: {exc}") from exc
    if bundle is None or bundle.get("nonce") != nonce:
        raise EnrollmentError("issued certificate does not carry this enrollment's nonce and evidence")
    anchor = ca_cert or chain[-1]
    try:
        verify_chain(leaf, intermediates=list(chain[1:-1]), roots=[anchor], at=at)
    except CertsError as exc:
        raise EnrollmentError(f"issued certificate does not chain to the CA: {exc}") from exc


def enroll(
    url: str,
    private_key: ec.EllipticCurvePrivateKey,
    collect: Callable[[bytes], Sequence[Evidence]],
    *,
    attempts: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    timeout: float = 10.0,
    ca_cert: x509.Certificate | None = None,
    cafile: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Enrollment:
    """Obtain a certificate for `private_key` from the CA at `url`.

    `collect(nonce)` returns the evidence bound to the key and the CA's nonce (GPU first, then
    CPU evidence whose report_data covers them: attestation.binding). Raises EnrollmentRefused
    on a refusal, CaUnavailable when retries run out, EnrollmentError on a bad response.
    """
    client = CaClient(url, timeout=timeout, cafile=cafile)
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    csr = build_csr(private_key)
    last = ""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            nonce = client.nonce()
            evidence = tuple(collect(nonce))
            chain = client.submit(csr, nonce, evidence)
        except _Transient as exc:
            last = str(exc)
            if attempt < attempts:
                delay = min(max_backoff, backoff * 2 ** (attempt - 1))
                log.warning(
                    "enrollment attempt %d/%d failed: %s; retrying in %.1f s", attempt, attempts, last, delay
                )
                sleep(delay)
            continue
        check_issued(chain, spki_der=spki, nonce=nonce, ca_cert=ca_cert, at=dt.datetime.now(dt.UTC))
        log.info("enrolled: certificate serial %x from %s", chain[0].serial_number, client.url)
        return Enrollment(chain=tuple(chain), nonce=nonce, evidence=evidence)
    raise CaUnavailable(f"CA at {client.url} unavailable after {attempts} attempt(s): {last}")
