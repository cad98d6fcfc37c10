"""COSE_Sign1 (RFC 9052 §4.2) with ES384 and x5chain (RFC 9360), strictly parsed.

Written here rather than taken from pycose: the structure is four CBOR items and one signature,
and a strict parser that refuses every variation we do not produce (indefinite lengths, missing
tag, duplicate or unknown critical headers, detached payloads) is smaller than auditing a general
library's leniency. The cryptography is pyca `cryptography`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from loader.errors import ReportError

TAG_SIGN1 = 18
HDR_ALG = 1
HDR_CRIT = 2
HDR_CONTENT_TYPE = 3
HDR_X5CHAIN = 33
ALG_ES384 = -35
SIG_LEN = 96
MAX_REPORT_BYTES = 8 << 20


@dataclass(frozen=True)
class Sign1:
    protected_raw: bytes
    protected: dict[int, Any]
    unprotected: Mapping[int, Any]
    payload: bytes
    signature: bytes

    @property
    def x5chain(self) -> list[bytes]:
        value = self.protected.get(HDR_X5CHAIN)
        return [value] if isinstance(value, bytes) else list(value or [])


def sig_structure(protected_raw: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected_raw, b"", payload], canonical=True)


def encode_sign1(
    payload: bytes, *, x5chain: list[bytes], content_type: str, sign: Callable[[bytes], bytes]
) -> bytes:
    chain: bytes | list[bytes] = x5chain[0] if len(x5chain) == 1 else x5chain
    protected = {HDR_ALG: ALG_ES384, HDR_CONTENT_TYPE: content_type, HDR_X5CHAIN: chain}
    protected_raw = cbor2.dumps(protected, canonical=True)
    signature = sign(sig_structure(protected_raw, payload))
    if len(signature) != SIG_LEN:
        raise ValueError("ES384 signature must be 96 bytes")
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected_raw, {}, payload, signature]), canonical=True)


_CBOR_ERRORS = (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError)


def decode_cbor(data: bytes, what: str, *, canonical: bool = False) -> Any:
    """One CBOR item; with `canonical`, also refuse any encoding but the deterministic one.

    Re-encoding is part of the check, and it can fail on items the decoder builds but the
    encoder refuses (tag 36 MIME messages, tag 28/29 self-referencing arrays): those are
    malformed input too, never an exception for the caller.
    """
    try:
        obj = cbor2.loads(data)
    except _CBOR_ERRORS as exc:
        raise ReportError(f"{what}: not well-formed CBOR ({exc})") from exc
    if canonical:
        try:
            same = cbor2.dumps(obj, canonical=True) == data
        except _CBOR_ERRORS as exc:
            raise ReportError(f"{what}: holds CBOR items that cannot be re-encoded ({exc})") from exc
        if not same:
            raise ReportError(f"{what}: not in deterministic CBOR encoding (altered or trailing bytes)")
    return obj


def decode_sign1(data: bytes) -> Sign1:
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"report: {len(data)} bytes, more than the {MAX_REPORT_BYTES} allowed")
    obj = decode_cbor(data, "report", canonical=True)
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != TAG_SIGN1:
        raise ReportError("report: expected a COSE_Sign1 (CBOR tag 18)")
    body = obj.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise ReportError("report: COSE_Sign1 must be an array of 4 items")
    protected_raw, unprotected, payload, signature = body
    if not isinstance(protected_raw, bytes) or not isinstance(unprotected, Mapping):
        raise ReportError("report: COSE_Sign1 headers have the wrong types")
    if not isinstance(payload, bytes):
        raise ReportError("report: payload must be an attached byte string")
    if not isinstance(signature, bytes) or len(signature) != SIG_LEN:
        raise ReportError(f"report: ES384 signature must be {SIG_LEN} bytes")
    protected = decode_cbor(protected_raw, "report protected header", canonical=True)
    if not isinstance(protected, dict):
        raise ReportError("report: protected header must be a map")
    if not all(type(label) is int for label in protected):
        # `true` and 1.0 hash and compare equal to 1: they must not pass as the alg label.
        raise ReportError("report: protected header labels must be integers")
    if unprotected:
        raise ReportError("report: unexpected unprotected header parameters")
    if protected.get(HDR_ALG) != ALG_ES384:
        raise ReportError(f"report: alg must be ES384 (-35), found {protected.get(HDR_ALG)!r}")
    if HDR_CRIT in protected or set(protected) - {HDR_ALG, HDR_CONTENT_TYPE, HDR_X5CHAIN}:
        raise ReportError("report: unknown protected header parameters")
    chain = protected.get(HDR_X5CHAIN)
    if not (
        isinstance(chain, bytes)
        or (isinstance(chain, list) and chain and all(isinstance(c, bytes) for c in chain))
    ):
        raise ReportError("report: x5chain (33) must hold the signer's certificate chain")
    return Sign1(protected_raw, protected, unprotected, payload, signature)


def verify_sign1(msg: Sign1, public_key: ec.EllipticCurvePublicKey) -> bool:
    if not isinstance(public_key.curve, ec.SECP384R1):
        return False
    r = int.from_bytes(msg.signature[:48], "big")
    s = int.from_bytes(msg.signature[48:], "big")
    try:
        public_key.verify(
            encode_dss_signature(r, s),
            sig_structure(msg.protected_raw, msg.payload),
            ec.ECDSA(hashes.SHA384()),
        )
    except InvalidSignature:
        return False
    return True


# Detached-payload COSE_Sign1 (RFC 9052 §2: payload nil, supplied by the verifier) for the
# parties' signatures over approved lists. Same strictness as decode_sign1; the algorithm
# and the header set are the caller's to check, since they differ from the report's.
ALG_EDDSA = -8
HDR_KID = 4
HDR_CWT_CLAIMS = 15  # RFC 9597: CWT claims carried in a COSE header


def detached_sig_structure(protected_raw: bytes, payload: bytes) -> bytes:
    return sig_structure(protected_raw, payload)


def encode_sign1_detached(protected: dict[int, Any], payload: bytes, sign: Callable[[bytes], bytes]) -> bytes:
    """A tagged COSE_Sign1 whose payload is nil; `sign` gets the Sig_structure bytes."""
    protected_raw = cbor2.dumps(protected, canonical=True)
    signature = sign(sig_structure(protected_raw, payload))
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected_raw, {}, None, signature]), canonical=True)


def decode_sign1_detached(data: bytes, what: str, limit: int = 64 << 10) -> Sign1:
    """Parse a detached COSE_Sign1; `payload` is returned empty and must be supplied to verify."""
    if len(data) > limit:
        raise ReportError(f"{what}: {len(data)} bytes, more than the {limit} allowed")
    obj = decode_cbor(data, what)
    if cbor2.dumps(obj, canonical=True) != data:
        raise ReportError(f"{what}: not in deterministic CBOR encoding (altered or trailing bytes)")
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != TAG_SIGN1:
        raise ReportError(f"{what}: expected a COSE_Sign1 (CBOR tag 18)")
    body = obj.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise ReportError(f"{what}: COSE_Sign1 must be an array of 4 items")
    protected_raw, unprotected, payload, signature = body
    if not isinstance(protected_raw, bytes) or not isinstance(unprotected, Mapping):
        raise ReportError(f"{what}: COSE_Sign1 headers have the wrong types")
    if payload is not None:
        raise ReportError(f"{what}: expected a detached payload (nil), found an attached one")
    if not isinstance(signature, bytes):
        raise ReportError(f"{what}: signature must be a byte string")
    if unprotected:
        raise ReportError(f"{what}: unexpected unprotected header parameters")
    protected = decode_cbor(protected_raw, f"{what} protected header")
    if not isinstance(protected, dict):
        raise ReportError(f"{what}: protected header must be a map")
    return Sign1(protected_raw, protected, unprotected, b"", signature)
