"""The attestation-based CA: a certificate for a CVM's key only after its evidence verifies.

Order of a request (cheap checks before expensive ones): nonce authentic, unexpired and issued
by this replica -> CSR parses and its signature verifies -> nonce reserved (a concurrent request
with the same nonce is refused) -> evidence types allowed and complete -> every piece of evidence
verified by its attestation verifier, with the binding recomputed from the CSR's key and the
nonce -> nonce spent (single use; evidence that did not verify releases it, so garbage cannot
fill the replay cache) -> verified claims validated against the policy -> leaf issued.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation import binding, verifier_for
from attestation.evidence import Evidence, Result
from certs.ca.nonce import NonceError, NonceService, create_key, load_key
from certs.ca.policy import GPU_TYPES, REFERENCE_FILE, CaPolicy, default_policy_text, load_policy
from certs.csr import CsrError, ParsedCsr, parse_csr
from certs.errors import CertsError
from certs.extensions import encode_evidence_extension
from certs.profile import cvm_leaf

log = logging.getLogger("certs.ca")

CA_CERT, CA_KEY, NONCE_KEY, POLICY = "ca.pem", "ca-key.pem", "nonce.key", "policy.toml"
MAX_EVIDENCE_ITEMS = 8
CLOCK_SKEW = dt.timedelta(seconds=60)
"""Leaves are back-dated this much so a relying party whose clock lags slightly accepts them."""


class Refusal(CertsError):
    """The CA will not issue; `code` is stable for programs, the message is for people."""

    def __init__(self, code: str, reason: str, details: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.details = tuple(details)


@dataclass(frozen=True)
class EnrollmentRequest:
    csr: bytes
    nonce: bytes
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    """Leaf first, then the CA certificate."""
    results: tuple[Result, ...] = field(default=())

    def chain_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def init_ca_dir(
    directory: Path,
    *,
    allow_mock: bool,
    common_name: str = "trusted-loader attestation CA",
    validity_days: int = 3650,
    now: dt.datetime | None = None,
) -> Path:
    """Create a CA in `directory` (ca.pem, ca-key.pem 0600, nonce.key 0600, policy.toml).

    Refuses to touch a directory that already holds any of those files.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [n for n in (CA_CERT, CA_KEY, NONCE_KEY, POLICY) if (directory / n).exists()]
    if existing:
        raise CertsError(f"{directory}: already holds {', '.join(existing)}; refusing to overwrite a CA")
    now = now or dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trusted-loader"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA384())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(directory / CA_KEY, pem_key)
    create_key(directory / NONCE_KEY)
    (directory / POLICY).write_text(default_policy_text(allow_mock=allow_mock))
    if allow_mock:
        write_mock_reference(directory / REFERENCE_FILE)
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


class CertificateAuthority:
    def __init__(
        self,
        *,
        cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        policy: CaPolicy,
        nonces: NonceService,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
            raise CertsError("CA key: expected an ECDSA P-384 private key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CertsError("CA key does not match the CA certificate")
        self.cert = cert
        self._key = key
        self.policy = policy
        self.nonces = nonces
        self._clock = clock
        self._ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._issued = 0
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, directory: Path, *, replica: int = 0, clock: Callable[[], float] = time.time
    ) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
            key_path = directory / CA_KEY
            if key_path.stat().st_mode & 0o077:
                raise CertsError(f"{key_path}: CA key is readable by group or others; chmod 600 it")
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            nonce_key = load_key(directory / NONCE_KEY)
        except OSError as exc:
            raise CertsError(
                f"{directory}: cannot load the CA: {exc.strerror or exc} ({exc.filename})"
            ) from exc
        except ValueError as exc:
            raise CertsError(f"{directory}: CA files are malformed ({exc})") from exc
        policy = load_policy(directory / POLICY)
        nonces = NonceService(nonce_key, ttl=policy.nonce_ttl_seconds, replica=replica, clock=clock)
        return cls(cert=cert, key=key, policy=policy, nonces=nonces, clock=clock)  # type: ignore[arg-type]

    @property
    def issued_count(self) -> int:
        return self._issued

    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, request: EnrollmentRequest) -> Issued:
        """Verify `request` and issue a leaf, or raise Refusal with the reason."""
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        try:
            self.nonces.check(request.nonce)
            csr = parse_csr(request.csr)
            self.nonces.reserve(request.nonce)
        except NonceError as exc:
            raise Refusal(exc.code, str(exc)) from exc
        except CsrError as exc:
            raise Refusal("csr_invalid", str(exc)) from exc
        try:
            self._check_types(request.evidence)
            results = self._verify_all(request, csr, now)
        except BaseException:
            self.nonces.release(request.nonce)
            raise
        self.nonces.spend(request.nonce)
        reasons = [
            reason
            for ev, result in zip(request.evidence, results, strict=True)
            for reason in self.policy.validate(ev.type, result)
        ]
        if reasons:
            raise Refusal("policy_refused", f"refused by CA policy: {reasons[0]}", reasons)
        leaf = self._sign_leaf(csr, request, results, now)
        with self._lock:
            self._issued += 1
        log.info(
            "issued serial %x for key sha256:%s (%s)",
            leaf.serial_number,
            binding.key_hash(csr.spki_der).hex(),
            ", ".join(e.type for e in request.evidence),
        )
        return Issued(certificate=leaf, chain=(leaf, self.cert), results=tuple(results))

    def _check_types(self, evidence: Sequence[Evidence]) -> None:
        if not evidence:
            raise Refusal("evidence_missing", "request carries no evidence")
        if len(evidence) > MAX_EVIDENCE_ITEMS:
            raise Refusal(
                "bad_request", f"request carries {len(evidence)} evidence items, at most {MAX_EVIDENCE_ITEMS}"
            )
        types = [e.type for e in evidence]
        for kind in types:
            if kind not in self.policy.allowed_types:
                allowed = ", ".join(sorted(self.policy.allowed_types))
                raise Refusal(
                    "policy_refused", f"evidence type {kind!r} is not allowed by the CA policy ({allowed})"
                )
        if all(kind in GPU_TYPES for kind in types):
            raise Refusal(
                "evidence_missing", "request carries only GPU evidence; CPU TEE evidence is required"
            )
        missing = sorted(self.policy.required_types - set(types))
        if missing:
            raise Refusal("evidence_missing", f"CA policy requires evidence of type {', '.join(missing)}")

    def _verify_all(self, request: EnrollmentRequest, csr: ParsedCsr, now: dt.datetime) -> list[Result]:
        gpu = [e for e in request.evidence if e.type in GPU_TYPES]
        expected_cpu = binding.report_data(csr.spki_der, request.nonce, gpu)
        expected_gpu = binding.gpu_nonce(csr.spki_der, request.nonce)
        results = []
        for index, ev in enumerate(request.evidence):
            expected = expected_gpu if ev.type in GPU_TYPES else expected_cpu
            result = self._verify_one(ev, expected, now, index)
            if not result.ok:
                code = "binding_mismatch" if _only_binding_failed(result) else "evidence_rejected"
                raise Refusal(
                    code,
                    f"evidence {index} ({ev.type}) rejected: {result.reason()}",
                    [f"{c.name}: {c.detail}" for c in result.failures],
                )
            if not hmac.compare_digest(result.report_data, expected):
                raise Refusal(
                    "binding_mismatch",
                    f"evidence {index} ({ev.type}) is bound to another key or nonce: its report_data "
                    f"{result.report_data.hex()[:16]}… differs from the binding of the CSR key and nonce "
                    f"{expected.hex()[:16]}…",
                )
            results.append(result)
        return results

    def _verify_one(self, ev: Evidence, expected: bytes, now: dt.datetime, index: int) -> Result:
        try:
            verifier = verifier_for(ev.type)
        except Exception as exc:
            raise Refusal(
                "evidence_rejected", f"evidence {index} ({ev.type}): no verifier available ({exc})"
            ) from exc
        try:
            return verifier.verify(
                ev, expected_report_data=expected, trust=self.policy.trust_for(ev.type), at=now
            )
        except Exception as exc:
            # A verifier must not raise for bad evidence; if one does, refuse rather than crash.
            log.exception("verifier for %s raised", ev.type)
            raise Refusal(
                "evidence_rejected",
                f"evidence {index} ({ev.type}): verifier error ({type(exc).__name__}: {exc})",
            ) from exc

    def _sign_leaf(
        self, csr: ParsedCsr, request: EnrollmentRequest, results: Sequence[Result], now: dt.datetime
    ) -> x509.Certificate:
        ca_not_after = self.cert.not_valid_after_utc
        if now >= ca_not_after:
            raise Refusal("ca_expired", f"the CA certificate expired at {ca_not_after.isoformat()}")
        not_after = min(now + dt.timedelta(seconds=self.policy.validity_seconds), ca_not_after)
        bits = self.policy.serial_bits
        serial = secrets.randbits(bits - 1) | (1 << (bits - 1))
        key_id = binding.key_hash(csr.spki_der).hex()[:32]
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"{self.policy.subject_prefix} {key_id}")]
        )
        bundle = {
            "nonce": request.nonce,
            "evidence": [e.to_cbor_obj() for e in request.evidence],
            "claims": verified_claims(results, policy=self.policy, at=now),
        }
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key)
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
        )
        builder = (
            cvm_leaf(builder, csr.public_key)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski), critical=False
            )
            .add_extension(encode_evidence_extension(bundle), critical=False)
        )
        return builder.sign(self._key, hashes.SHA384())


def verified_claims(results: Sequence[Result], *, policy: CaPolicy, at: dt.datetime) -> dict[str, Any]:
    """The "claims" map of the evidence extension: what was verified, when, under which policy,
    appraised how ("appraisal": the reference values' digest, or any_image true, and allow_debug),
    so a verifier sees a certificate issued without pinned reference values."""
    appraisal = policy.appraisal
    return {
        "verifier": "trusted-loader-ca",
        "verified_at": at.replace(microsecond=0).isoformat(),
        "policy": policy.digest,
        "appraisal": {
            "reference_digest": appraisal.reference.digest if appraisal.reference else None,
            "any_image": appraisal.any_image,
            "allow_debug": appraisal.allow_debug,
        },
        "results": [
            {
                "type": r.type,
                "mock": r.is_mock,
                "tcb_status": r.tcb_status,
                "advisories": list(r.advisories),
                "claims": dict(r.claims),
            }
            for r in results
        ],
    }


def _only_binding_failed(result: Result) -> bool:
    return all(c.name in {"report_data", "nonce", "binding"} for c in result.failures)


def write_mock_reference(path: Path) -> None:
    """The mock platform's and mock GPU's reference values, for a CA that accepts the mock."""
    from attestation.mock.attester import reference_entry
    from attestation.nvidia.mockgpu import reference_entry as gpu_entry
    from attestation.reference import reference_document

    path.write_bytes(reference_document([reference_entry(), gpu_entry()]))
