"""The X.509 extension that carries attestation evidence in a CVM certificate.

No standard OID fits "the loader's evidence bundle with its nonce" exactly (TCG DICE's
TaggedEvidence wraps one conceptual message, Intel RA-TLS one SGX quote), so it lives under
the project's own arc 2.25.<uuid> (ITU-T X.667). extnValue is a DER OCTET STRING whose content
is deterministic CBOR: {"nonce": bstr, "evidence": [ {type, data, aux}, ... ], "claims": map}.
"""

from __future__ import annotations

from typing import Any

import cbor2
from asn1crypto import core
from cryptography import x509

from certs.errors import CertificateFormatError

PROJECT_ARC = "2.25.264098798602557620900161609155389804679"
EVIDENCE_OID = x509.ObjectIdentifier(PROJECT_ARC + ".1")
MAX_EXTENSION_BYTES = 2 << 20


def encode_evidence_extension(bundle: dict[str, Any]) -> x509.UnrecognizedExtension:
    value = core.OctetString(cbor2.dumps(bundle, canonical=True)).dump()
    return x509.UnrecognizedExtension(EVIDENCE_OID, value)


def decode_evidence_extension(cert: x509.Certificate) -> dict[str, Any] | None:
    """The evidence bundle in `cert`, or None when the certificate carries none."""
    try:
        ext = cert.extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CertificateFormatError(f"certificate extensions: malformed ({exc})") from exc
    raw = ext.value.value  # type: ignore[attr-defined]
    if len(raw) > MAX_EXTENSION_BYTES:
        raise CertificateFormatError("evidence extension: too large")
    try:
        octets = core.OctetString.load(raw, strict=True).native
        bundle = cbor2.loads(octets)
    except (ValueError, TypeError, OverflowError, RecursionError, cbor2.CBORError) as exc:
        raise CertificateFormatError(f"evidence extension: malformed ({exc})") from exc
    if not isinstance(bundle, dict) or not isinstance(bundle.get("evidence"), list):
        raise CertificateFormatError("evidence extension: expected a map with an evidence list")
    return bundle
