"""A data owner's check of a CVM certificate before wrapping a dataset key to it.

The certificate the loader publishes at boot (`[grants] cert_out`) carries the hardware
evidence in its evidence extension (certs/extensions.py). Before a grant is made, the owner
checks: the chain (to the given CA, or self-issued in offline mode), that the evidence's
report_data binds this certificate's key and the bundle's nonce (attestation/binding.py), that
every piece of evidence verifies with its vendor verifier (mock evidence only when allowed),
and optionally that the TEE type is one the approved list allows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import AttestationError, Evidence, Result, Trust, binding, verifier_for
from attestation.reference import Appraisal, appraise
from certs.chain import load_certificates, verify_chain
from certs.errors import CertsError
from certs.extensions import decode_evidence_extension
from loader.errors import TrustError

GPU_TYPES = ("nvidia", "mock-gpu")


@dataclass(frozen=True)
class CvmIdentity:
    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    spki: bytes
    tee: str
    results: tuple[Result, ...]


def load_chain(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        chain = load_certificates(data, what=what)
    except CertsError as exc:
        raise TrustError(f"{what}: {exc}") from None
    if not chain:
        raise TrustError(f"{what}: holds no certificate")
    return chain


def verify_cvm_certificate(
    chain: Sequence[x509.Certificate],
    *,
    what: str,
    at: dt.datetime,
    ca: Sequence[x509.Certificate] = (),
    allow_mock: bool = False,
    allowed_tee: Sequence[str] = (),
    appraisal: Appraisal | None = None,
) -> CvmIdentity:
    """Raise TrustError naming the first failed step; return the attested key otherwise.

    `appraisal` pins the platform (attestation/reference.py); None pins nothing and refuses
    every platform, so a data key is never wrapped to an unappraised CVM by omission."""
    leaf, rest = chain[0], list(chain[1:])
    try:
        if ca:
            verify_chain(leaf, intermediates=rest, roots=list(ca), at=at)
        elif leaf.issuer == leaf.subject:
            verify_chain(leaf, roots=[leaf], at=at)
        else:
            raise TrustError(f"{what}: issued by a CA; pass --ca with that CA's certificate")
    except CertsError as exc:
        raise TrustError(f"{what}: certificate: {exc}") from None
    public = leaf.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP384R1):
        raise TrustError(f"{what}: the certificate's key is not a P-384 key")
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        bundle = decode_evidence_extension(leaf)
    except CertsError as exc:
        raise TrustError(f"{what}: {exc}") from None
    if bundle is None or not bundle.get("evidence"):
        raise TrustError(f"{what}: the certificate carries no attestation evidence")
    results = _verify_evidence(bundle, spki, what, at, Trust(allow_mock=allow_mock))
    for i, res in enumerate(results):
        failed = [c for c in appraise(res, appraisal or Appraisal()) if not c.passed]
        if failed:
            raise TrustError(f"{what}: evidence[{i}]: {res.type}: {failed[0].name}: {failed[0].detail}")
    tee = results[0].type
    if allowed_tee and tee not in allowed_tee:
        raise TrustError(
            f"{what}: TEE {tee!r} is not allowed by the approved list ({', '.join(allowed_tee)})"
        )
    return CvmIdentity(leaf, public, spki, tee, tuple(results))


def _verify_evidence(bundle: dict, spki: bytes, what: str, at: dt.datetime, trust: Trust) -> list[Result]:  # type: ignore[type-arg]
    try:
        items = [Evidence.from_cbor_obj(e) for e in bundle["evidence"]]
        nonce = bundle.get("nonce")
        if not isinstance(nonce, bytes):
            raise TrustError(f"{what}: the evidence bundle has no nonce")
        gpus = [e for e in items if e.type in GPU_TYPES]
        if items[0].type in GPU_TYPES or len(items) - len(gpus) != 1:
            raise TrustError(f"{what}: expected one CPU evidence first, then GPU evidence")
        expected, gpu_expected = binding.report_data(spki, nonce, gpus), binding.gpu_nonce(spki, nonce)
        results = []
        for i, ev in enumerate(items):
            want = gpu_expected if ev.type in GPU_TYPES else expected
            res = verifier_for(ev.type).verify(ev, expected_report_data=want, trust=trust, at=at)
            if not res.ok:
                raise TrustError(f"{what}: evidence[{i}]: {res.reason()}")
            results.append(res)
    except AttestationError as exc:
        raise TrustError(f"{what}: evidence: {exc}") from None
    except ImportError as exc:
        raise TrustError(f"{what}: evidence: no verifier available for it ({exc})") from None
    return results
