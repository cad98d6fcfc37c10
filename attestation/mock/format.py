"""Mock evidence encoding: CBOR [MAGIC, payload bstr, ECDSA P-384 DER signature bstr]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from attestation.errors import EvidenceFormatError

MAGIC = "trusted-loader/mock-evidence/v1"
REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
MAX_CREATED = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime can represent
_FIELDS = {"mock", "tee", "report_data", "registers", "debug", "created"}


@dataclass(frozen=True)
class MockEvidence:
    payload: bytes
    signature: bytes
    report_data: bytes
    registers: dict[str, bytes]
    debug: bool
    created: int


def encode_payload(report_data: bytes, registers: dict[str, bytes], created: int) -> bytes:
    return cbor2.dumps(
        {
            "mock": True,
            "tee": "mock",
            "report_data": report_data,
            "registers": registers,
            "debug": False,
            "created": created,
        },
        canonical=True,
    )


def encode(payload: bytes, signature: bytes) -> bytes:
    return cbor2.dumps([MAGIC, payload, signature], canonical=True)


def _load(blob: bytes, what: str) -> Any:
    try:
        return cbor2.loads(blob)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise EvidenceFormatError(f"mock evidence: {what} is not CBOR ({exc})") from exc


def decode(blob: bytes) -> MockEvidence:
    outer = _load(blob, "envelope")
    if not (isinstance(outer, list) and len(outer) == 3 and outer[0] == MAGIC):
        raise EvidenceFormatError(f"mock evidence: expected [{MAGIC!r}, payload, signature]")
    _, payload, signature = outer
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise EvidenceFormatError("mock evidence: payload and signature must be byte strings")
    body = _load(payload, "payload")
    if not isinstance(body, dict) or set(body) != _FIELDS:
        raise EvidenceFormatError(f"mock evidence: payload fields must be {sorted(_FIELDS)}")
    if body["mock"] is not True or body["tee"] != "mock":
        raise EvidenceFormatError("mock evidence: payload does not declare itself mock")
    rd, regs = body["report_data"], body["registers"]
    if not isinstance(rd, bytes) or len(rd) != 64:
        raise EvidenceFormatError("mock evidence: report_data must be 64 bytes")
    if not isinstance(regs, dict) or set(regs) != set(REGISTERS):
        raise EvidenceFormatError(f"mock evidence: registers must be {list(REGISTERS)}")
    if not all(isinstance(v, bytes) and len(v) == 48 for v in regs.values()):
        raise EvidenceFormatError("mock evidence: each register must be 48 bytes")
    created = body["created"]
    if not isinstance(body["debug"], bool) or type(created) is not int:
        raise EvidenceFormatError("mock evidence: debug must be a bool and created an integer")
    if not 0 <= created <= MAX_CREATED:
        raise EvidenceFormatError(f"mock evidence: created {created} is not a time in 1970..9999")
    return MockEvidence(payload, signature, rd, dict(regs), body["debug"], body["created"])
