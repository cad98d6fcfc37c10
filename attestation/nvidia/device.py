"""The GPU's identity: its certificate chain, the report signature, and the leaf's FWID.

The GPU hands out its full chain, leaf first (as NVML returns it and as hopperCertChain.txt
holds it): GSP FMC leaf → GSP BROM → GH100 Provisioner ICA → GH100 Identity → NVIDIA Device
Identity CA. We require that exact shape: the last certificate must be the trusted root
itself and every given certificate must be on the validated path, so a chain with a missing
or extra certificate is rejected rather than silently repaired.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import ClassVar

from asn1crypto import core, keys
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.nvidia.spdm import SIGNATURE_LEN, Report
from certs.chain import describe, fingerprint, load_certificates, verify_chain

FWID_EXTENSION_OID = x509.ObjectIdentifier("2.23.133.5.4.1")  # TCG DICE (RIoT CompositeDeviceID)
SHA384_OID = "2.16.840.1.101.3.4.2.2"
MAX_CHAIN_CERTS = 8


class _Fwid(core.Sequence):
    _fields: ClassVar = [("hash_alg", core.ObjectIdentifier), ("digest", core.OctetString)]


class _CompositeDeviceId(core.Sequence):
    """RIoT CompositeDeviceID ::= SEQUENCE { version INTEGER, deviceKey SubjectPublicKeyInfo, fwid FWID }."""

    _fields: ClassVar = [("version", core.Integer), ("device_key", keys.PublicKeyInfo), ("fwid", _Fwid)]


def load_chain(pem: bytes) -> list[x509.Certificate]:
    certs = load_certificates(pem, what="GPU certificate chain")
    if len(certs) > MAX_CHAIN_CERTS:
        raise EvidenceFormatError(
            f"GPU certificate chain: {len(certs)} certificates, at most {MAX_CHAIN_CERTS}"
        )
    return certs


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _identity(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """Subject and public key: what makes a self-signed root the same anchor."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert.subject.public_bytes(), spki


def check_chain(
    certs: Sequence[x509.Certificate], *, roots: Sequence[x509.Certificate], at: dt.datetime
) -> list[x509.Certificate]:
    """Validate the full chain (leaf … root) at `at`; raises VerificationError or certs' ChainError.

    The given root must be a trusted root, byte for byte; the path OpenSSL builds
    from the trust store must run through exactly the given certificates, in order.
    """
    if len(certs) < 2:
        raise VerificationError(
            f"expected a chain from the GPU leaf to the root, found {len(certs)} certificate"
        )
    last = certs[-1]
    # Byte for byte: path building uses the trusted copy, so any other bytes in the embedded
    # root would be unauthenticated slack in the evidence.
    if fingerprint(last) not in {fingerprint(r) for r in roots}:
        raise VerificationError(
            f"the chain must end at the trusted root ({', '.join(describe(r) for r in roots)}); "
            f"it ends at {describe(last)}"
            + (
                " (same name and key, different certificate)"
                if _identity(last) in {_identity(r) for r in roots}
                else ""
            )
        )
    if _is_ca(certs[0]):
        raise VerificationError(
            f"the first certificate must be the GPU's end-entity leaf; {describe(certs[0])} is a CA"
        )
    path = verify_chain(certs[0], intermediates=list(certs[1:-1]), roots=roots, at=at)
    if [fingerprint(c) for c in path[:-1]] != [fingerprint(c) for c in certs[:-1]]:
        raise VerificationError(
            f"the validated path ({len(path)} certificates) is not the given chain ({len(certs)}), "
            "certificates are missing, extra or out of order"
        )
    return path


def verify_report_signature(report: Report, leaf: x509.Certificate) -> None:
    """ECDSA P-384 / SHA-384 over request ‖ response-without-signature; raises VerificationError."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError(f"leaf key of {describe(leaf)} is not ECDSA P-384")
    sig = report.response.signature
    half = SIGNATURE_LEN // 2
    der = encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
    try:
        key.verify(der, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError(f"report signature does not verify with the key of {describe(leaf)}") from exc


def leaf_fwid(leaf: x509.Certificate) -> bytes:
    """The SHA-384 FWID in the leaf's 2.23.133.5.4.1 extension; raises EvidenceFormatError."""
    try:
        ext = leaf.extensions.get_extension_for_oid(FWID_EXTENSION_OID)
    except x509.ExtensionNotFound as exc:
        raise EvidenceFormatError(
            f"{describe(leaf)} has no FWID extension ({FWID_EXTENSION_OID.dotted_string})"
        ) from exc
    value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
    try:
        parsed = _CompositeDeviceId.load(value, strict=True)
        hash_alg = parsed["fwid"]["hash_alg"].dotted
        digest = parsed["fwid"]["digest"].native
        parsed["device_key"].native  # noqa: B018 - force parsing of the nested key
    except (ValueError, TypeError, KeyError) as exc:
        raise EvidenceFormatError(f"FWID extension of {describe(leaf)} does not parse ({exc})") from exc
    if hash_alg != SHA384_OID or len(digest) != 48:
        raise EvidenceFormatError(
            f"FWID extension of {describe(leaf)}: expected a SHA-384 digest, "
            f"found {hash_alg} ({len(digest)} bytes)"
        )
    return bytes(digest)
