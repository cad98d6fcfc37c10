"""The binding between the loader's key, a nonce and the hardware evidence.

report_data (64 bytes) = SHA-512(DOMAIN_TAG ‖ SHA-256(SPKI DER) ‖ nonce ‖ SHA-256(CBOR(other)))
where `other` is the list of additional evidence (e.g. GPU reports) in deterministic CBOR, an
empty list when there is none. Every part has a fixed length, so no two inputs collide.
The NVIDIA nonce (32 bytes) is SHA-256(DOMAIN_TAG ‖ SHA-256(SPKI DER) ‖ nonce): the GPU
evidence is collected first, with this nonce, and then bound into the CPU report_data.
A verifier recomputes these values; it never takes them from the evidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cbor2

from attestation.errors import EvidenceFormatError
from attestation.evidence import Evidence

DOMAIN_TAG = b"trusted-loader/binding/v1\x00"
NONCE_LEN = 32


def key_hash(spki_der: bytes) -> bytes:
    return hashlib.sha256(spki_der).digest()


def _prefix(spki_der: bytes, nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise EvidenceFormatError(f"nonce: expected {NONCE_LEN} bytes, found {len(nonce)}")
    return DOMAIN_TAG + key_hash(spki_der) + nonce


def other_evidence_digest(other: Sequence[Evidence]) -> bytes:
    encoded = cbor2.dumps([e.to_cbor_obj() for e in other], canonical=True)
    return hashlib.sha256(encoded).digest()


def report_data(spki_der: bytes, nonce: bytes, other: Sequence[Evidence] = ()) -> bytes:
    """The 64 bytes the CPU TEE must carry in its REPORTDATA field."""
    return hashlib.sha512(_prefix(spki_der, nonce) + other_evidence_digest(other)).digest()


def gpu_nonce(spki_der: bytes, nonce: bytes) -> bytes:
    """The 32-byte nonce given to each GPU before the CPU evidence is collected."""
    return hashlib.sha256(_prefix(spki_der, nonce)).digest()
