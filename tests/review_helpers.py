"""Forge integrity reports for the red-team tests.

A forged report is built the way the loader builds one (fresh key, binding, mock evidence,
self-issued certificate carrying the evidence, COSE_Sign1), from the payload of a real demo
report, with hooks to change one thing at a time. Every report here is signed by its own key
and bound to its own mock evidence, so what a verifier rejects is the changed field, not a
broken signature or binding. `forge()` with no hooks must verify (with allow_mock).
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Callable
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation import binding
from attestation.mock.attester import MockAttester
from certs.extensions import encode_evidence_extension
from certs.selfissue import self_issue
from loader.boot.keys import EphemeralKey
from loader.report import cose
from loader.report.document import CONTENT_TYPE, parse_report, parse_utc

Payload = dict[str, Any]


def base_payload(raw_report: bytes) -> Payload:
    return copy.deepcopy(parse_report(raw_report).payload)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def leaf_certificate(
    key: ec.EllipticCurvePrivateKey,
    bundle: dict[str, Any],
    now: dt.datetime,
    *,
    ca: bool = False,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    """A leaf like certs.selfissue's, with the knobs an attacker would turn."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")])
    issuer_name, signer = issuer or (name, key)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(encode_evidence_extension(bundle), critical=False)
        .sign(signer, hashes.SHA384())
    )


def ca_certificate(cn: str = "forged CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3650))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return cert, key


def forge(
    template: Payload,
    *,
    mutate: Callable[[Payload], None] | None = None,
    evidence: Callable[[bytes], list[dict[str, Any]]] | None = None,
    chain: Callable[[EphemeralKey, dict[str, Any], dt.datetime], list[bytes]] | None = None,
) -> bytes:
    """A report signed by a fresh key, bound to fresh mock evidence, from `template`.

    `evidence(report_data)` replaces the evidence list; `mutate(payload)` runs last, before
    the certificate is issued (so the certificate carries the mutated evidence); `chain`
    returns the x5chain DER list instead of the self-issued certificate.
    """
    key = EphemeralKey()
    nonce = os.urandom(binding.NONCE_LEN)
    report_data = binding.report_data(key.spki, nonce)
    payload = copy.deepcopy(template)
    payload["key"]["spki"] = key.spki
    payload["nonce"] = nonce
    payload["evidence"] = (
        evidence(report_data) if evidence else [MockAttester().collect(report_data).to_cbor_obj()]
    )
    if mutate:
        mutate(payload)
    bundle = {"nonce": payload["nonce"], "evidence": payload["evidence"], "claims": {}}
    signed_at = parse_utc(payload["timestamps"]["finished"])
    if chain:
        x5chain = chain(key, bundle, signed_at)
    else:
        x5chain = [_der(self_issue(key.private, common_name="forged", bundle=bundle, now=signed_at))]
    body = cbor2.dumps(payload, canonical=True)
    return cose.encode_sign1(body, x5chain=x5chain, content_type=CONTENT_TYPE, sign=key.sign_raw)


def checks_of(verification: Any) -> dict[str, tuple[bool, str]]:
    return {name: (passed, detail) for name, passed, detail in verification.checks}


def der(cert: x509.Certificate) -> bytes:
    return _der(cert)


def keep_boot_keys(monkeypatch: Any) -> list[Any]:
    """Make the boot keep each run's ephemeral key (appended to the returned list, never
    discarded), so that a test can re-sign an altered report with the run's own key."""
    import loader.boot.sequence
    from loader.boot.keys import EphemeralKey

    kept: list[EphemeralKey] = []

    class KeptKey(EphemeralKey):
        def __init__(self) -> None:
            super().__init__()
            kept.append(self)

        def discard(self) -> None:
            pass

    monkeypatch.setattr(loader.boot.sequence, "EphemeralKey", KeptKey)
    return kept
