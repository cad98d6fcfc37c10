"""The CA's HTTP message formats, shared by the service and the loader's client.

JSON, binary fields in standard base64 (RFC 4648 §4, padded):

    GET  /v1/nonce         -> {"nonce": b64(32 bytes), "expires": ISO 8601, "ttl": seconds}
    POST /v1/certificates  <- {"csr": PEM, "nonce": b64,
                               "evidence": [{"type": str, "data": b64, "aux": {name: b64}}]}
                           -> 201 {"certificate": PEM, "chain": PEM leaf + CA,
                                   "serial": hex, "not_after": ISO 8601}
    any error              -> {"error": code, "reason": one line, "details": [lines]}

No aiohttp here: the loader's client imports this module with the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from attestation.errors import EvidenceFormatError
from attestation.evidence import Evidence
from certs.ca.authority import MAX_EVIDENCE_ITEMS, EnrollmentRequest, Issued, Refusal

MAX_TYPE_LEN = 32
MAX_AUX_ITEMS = 16


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise Refusal("bad_request", f"{where}: expected a base64 string, found {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Refusal("bad_request", f"{where}: not valid base64 ({exc})") from exc


def encode_request(csr_pem: bytes, nonce: bytes, evidence: Sequence[Evidence]) -> dict[str, Any]:
    return {
        "csr": csr_pem.decode("ascii"),
        "nonce": b64encode(nonce),
        "evidence": [
            {
                "type": e.type,
                "data": b64encode(e.data),
                "aux": {k: b64encode(v) for k, v in sorted(e.aux.items())},
            }
            for e in evidence
        ],
    }


def decode_request(doc: Any) -> EnrollmentRequest:
    """The enrollment request in a parsed JSON body; raises Refusal("bad_request") if malformed."""
    if not isinstance(doc, dict) or set(doc) != {"csr", "nonce", "evidence"}:
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise Refusal("bad_request", f"request: expected an object with csr, nonce, evidence; found {found}")
    csr = doc["csr"]
    if not isinstance(csr, str):
        raise Refusal("bad_request", "request.csr: expected a PEM string")
    evidence = doc["evidence"]
    if not isinstance(evidence, list):
        raise Refusal("bad_request", "request.evidence: expected a list")
    if len(evidence) > MAX_EVIDENCE_ITEMS:
        raise Refusal(
            "bad_request", f"request.evidence: {len(evidence)} items, at most {MAX_EVIDENCE_ITEMS} allowed"
        )
    items = tuple(_decode_evidence(item, f"request.evidence[{i}]") for i, item in enumerate(evidence))
    return EnrollmentRequest(
        csr=csr.encode("utf-8"), nonce=b64decode(doc["nonce"], "request.nonce"), evidence=items
    )


def _decode_evidence(item: Any, where: str) -> Evidence:
    if not isinstance(item, dict) or set(item) != {"type", "data", "aux"}:
        raise Refusal("bad_request", f"{where}: expected an object with type, data, aux")
    kind, aux = item["type"], item["aux"]
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_TYPE_LEN:
        raise Refusal("bad_request", f"{where}.type: expected a short string")
    if not isinstance(aux, dict) or len(aux) > MAX_AUX_ITEMS:
        raise Refusal("bad_request", f"{where}.aux: expected an object of at most {MAX_AUX_ITEMS} entries")
    obj = {
        "type": kind,
        "data": b64decode(item["data"], f"{where}.data"),
        "aux": {str(k): b64decode(v, f"{where}.aux.{k}") for k, v in aux.items()},
    }
    try:
        return Evidence.from_cbor_obj(obj)
    except EvidenceFormatError as exc:
        raise Refusal("bad_request", f"{where}: {exc}") from exc


def encode_issued(issued: Issued) -> dict[str, Any]:
    leaf = issued.certificate
    return {
        "certificate": leaf.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "chain": issued.chain_pem(),
        "serial": format(leaf.serial_number, "x"),
        "not_after": leaf.not_valid_after_utc.isoformat(),
    }


def encode_nonce(nonce: bytes, expiry: int, ttl: int) -> dict[str, Any]:
    return {
        "nonce": b64encode(nonce),
        "expires": dt.datetime.fromtimestamp(expiry, dt.UTC).isoformat(),
        "ttl": ttl,
    }


def encode_error(code: str, reason: str, details: Sequence[str] = ()) -> dict[str, Any]:
    return {"error": code, "reason": reason, "details": list(details)}


def error_fields(doc: Mapping[str, Any]) -> tuple[str, str]:
    """(code, reason) from an error body, tolerating a malformed one."""
    code = doc.get("error") if isinstance(doc.get("error"), str) else "unknown"
    reason = doc.get("reason") if isinstance(doc.get("reason"), str) else "(no reason given)"
    return str(code), str(reason)
