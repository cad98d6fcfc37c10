"""THE parser of NVIDIA GPU attestation reports: SPDM 1.1 GET_MEASUREMENTS request ‖ response.

Layout (DMTF DSP0274 1.1, §10.11; field names as in the spec):

request (37 bytes, signature requested):
    SPDMVersion(1)=0x11 RequestResponseCode(1)=0xE0 Param1(1) Param2(1) Nonce(32) SlotIDParam(1)
response:
    SPDMVersion(1)=0x11 RequestResponseCode(1)=0x60 Param1(1) Param2(1)
    NumberOfBlocks(1) MeasurementRecordLength(3, LE) MeasurementRecord(L)
    Nonce(32) OpaqueLength(2, LE) OpaqueData(OpaqueLength) Signature(96: ECDSA P-384 r ‖ s)
measurement block:
    Index(1) MeasurementSpecification(1) MeasurementSize(2, LE) Measurement(MeasurementSize)
DMTF measurement (MeasurementSpecification bit 0):
    DMTFSpecMeasurementValueType(1) DMTFSpecMeasurementValueSize(2, LE) DMTFSpecMeasurementValue

The signature covers request ‖ response up to the Signature field (SPDM 1.1 L1/L2 transcript,
hashed with SHA-384). The report comes as raw bytes or as hex text (as nvtrust stores it);
trailing bytes after the signature are an error.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from attestation.errors import EvidenceFormatError
from attestation.nvidia import opaque

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
NONCE_LEN = 32
SIGNATURE_LEN = 96  # ECDSA P-384: r ‖ s, 48 bytes each, big-endian
REQUEST_LEN = 4 + NONCE_LEN + 1
PARAM1_SIGNATURE_REQUESTED = 0x01
PARAM2_ALL_MEASUREMENTS = 0xFF
DMTF_SPEC = 0x01
MAX_REPORT_BYTES = 0x2000  # NVML's NVML_CC_GPU_ATTESTATION_REPORT_SIZE
_HEX_TEXT = re.compile(rb"[0-9A-Fa-f\s]+")


@dataclass(frozen=True)
class MeasurementBlock:
    index: int
    specification: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class Request:
    version: int
    code: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int

    @property
    def signature_requested(self) -> bool:
        return bool(self.param1 & PARAM1_SIGNATURE_REQUESTED)


@dataclass(frozen=True)
class Response:
    version: int
    code: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    nonce: bytes
    opaque_raw: bytes
    opaque: opaque.OpaqueData
    signature: bytes

    @property
    def slot_id(self) -> int:
        return self.param2 & 0x0F

    def measurement(self, index: int) -> MeasurementBlock | None:
        for block in self.blocks:
            if block.index == index:
                return block
        return None


@dataclass(frozen=True)
class Report:
    raw: bytes
    request: Request
    response: Response

    @property
    def signed_bytes(self) -> bytes:
        """request ‖ response without the signature: the SPDM 1.1 L1/L2 transcript."""
        return self.raw[: len(self.raw) - SIGNATURE_LEN]


class _Reader:
    """Sequential, bounds-checked reads naming the field that ran short."""

    def __init__(self, data: bytes, where: str, base: int = 0) -> None:
        self.data, self.where, self.base, self.pos = data, where, base, 0

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise EvidenceFormatError(
                f"{self.where}: {field} at offset {self.base + self.pos} needs {n} bytes, "
                f"only {len(self.data) - self.pos} remain"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u24(self, field: str) -> int:
        return int.from_bytes(self.take(3, field), "little")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def decode_text_or_raw(data: bytes) -> bytes:
    """Raw report bytes from hex text (whitespace allowed anywhere) or raw binary.

    Input made only of hex digits and whitespace is hex text; anything else is taken as raw
    (a raw report starts with 0x11, not a hex digit, so the two never overlap).
    """
    if data and _HEX_TEXT.fullmatch(data):
        digits = re.sub(rb"\s+", b"", data)
        if len(digits) % 2:
            raise EvidenceFormatError(f"report: hex text has an odd number of digits ({len(digits)})")
        raw = bytes.fromhex(digits.decode("ascii"))
    else:
        raw = data
    if len(raw) > MAX_REPORT_BYTES:
        raise EvidenceFormatError(f"report: {len(raw)} bytes, more than the {MAX_REPORT_BYTES} allowed")
    return raw


def parse(data: bytes) -> Report:
    """Parse a report (raw or hex text); raises EvidenceFormatError naming the field at fault."""
    if len(data) > 2 * MAX_REPORT_BYTES + 4096:
        raise EvidenceFormatError(f"report: {len(data)} bytes of input, far more than any report")
    raw = decode_text_or_raw(data)
    request = _parse_request(_Reader(raw[:REQUEST_LEN], "request"))
    response = _parse_response(raw[REQUEST_LEN:])
    if response.version != request.version:
        raise EvidenceFormatError(
            f"response: SPDMVersion 0x{response.version:02x} differs from "
            f"the request's 0x{request.version:02x}"
        )
    return Report(raw, request, response)


def _parse_request(r: _Reader) -> Request:
    version = r.u8("SPDMVersion")
    if version != SPDM_VERSION_1_1:
        raise EvidenceFormatError(f"request: SPDMVersion expected 0x11 (SPDM 1.1), found 0x{version:02x}")
    code = r.u8("RequestResponseCode")
    if code != GET_MEASUREMENTS:
        raise EvidenceFormatError(f"request: RequestResponseCode expected 0xe0, found 0x{code:02x}")
    param1, param2 = r.u8("Param1"), r.u8("Param2")
    if not param1 & PARAM1_SIGNATURE_REQUESTED:
        raise EvidenceFormatError("request: Param1 does not request a signature; the report is unsigned")
    nonce = r.take(NONCE_LEN, "Nonce")
    slot = r.u8("SlotIDParam")
    return Request(version, code, param1, param2, nonce, slot)


def _parse_response(data: bytes) -> Response:
    r = _Reader(data, "response", base=REQUEST_LEN)
    version = r.u8("SPDMVersion")
    code = r.u8("RequestResponseCode")
    if code != MEASUREMENTS:
        raise EvidenceFormatError(f"response: RequestResponseCode expected 0x60, found 0x{code:02x}")
    param1, param2 = r.u8("Param1"), r.u8("Param2")
    count = r.u8("NumberOfBlocks")
    record_len = r.u24("MeasurementRecordLength")
    record_base = REQUEST_LEN + r.pos
    blocks = _parse_record(r.take(record_len, "MeasurementRecord"), count, record_base)
    nonce = r.take(NONCE_LEN, "Nonce")
    opaque_len = r.u16("OpaqueLength")
    opaque_raw = r.take(opaque_len, "OpaqueData")
    signature = r.take(SIGNATURE_LEN, "Signature")
    if r.remaining:
        raise EvidenceFormatError(f"response: {r.remaining} trailing bytes after the Signature")
    return Response(
        version, code, param1, param2, blocks, nonce, opaque_raw, opaque.parse(opaque_raw), signature
    )


def _parse_record(record: bytes, count: int, base: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record, "measurement record", base)
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    while r.remaining:
        index = r.u8("Index")
        spec = r.u8("MeasurementSpecification")
        size = r.u16("MeasurementSize")
        where = f"measurement block {index}"
        if index in seen:
            raise EvidenceFormatError(f"{where}: Index occurs twice in the record")
        seen.add(index)
        if spec != DMTF_SPEC:
            raise EvidenceFormatError(
                f"{where}: MeasurementSpecification expected 0x01 (DMTF), found 0x{spec:02x}"
            )
        m = _Reader(r.take(size, "Measurement"), where, base + r.pos - size)
        value_type = m.u8("DMTFSpecMeasurementValueType")
        value = m.take(m.u16("DMTFSpecMeasurementValueSize"), "DMTFSpecMeasurementValue")
        if m.remaining:
            raise EvidenceFormatError(f"{where}: {m.remaining} bytes after DMTFSpecMeasurementValue")
        blocks.append(MeasurementBlock(index, spec, value_type, value))
    if len(blocks) != count:
        raise EvidenceFormatError(
            f"response: NumberOfBlocks is {count} but the record holds {len(blocks)} blocks"
        )
    return tuple(blocks)


# --- encoding (for the mock GPU; the same layout as parse) ---


def encode_request(nonce: bytes, *, slot_id: int = 0) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise EvidenceFormatError(f"request: nonce must be {NONCE_LEN} bytes, found {len(nonce)}")
    return (
        bytes([SPDM_VERSION_1_1, GET_MEASUREMENTS, PARAM1_SIGNATURE_REQUESTED, PARAM2_ALL_MEASUREMENTS])
        + nonce
        + bytes([slot_id])
    )


def encode_response_unsigned(
    measurements: list[tuple[int, bytes]], nonce: bytes, opaque_data: bytes, *, slot_id: int = 0
) -> bytes:
    """Response bytes up to (not including) the Signature; value type 0x01 as on Hopper."""
    record = b"".join(
        struct.pack("<BBH", index, DMTF_SPEC, 3 + len(value)) + struct.pack("<BH", 0x01, len(value)) + value
        for index, value in measurements
    )
    return (
        bytes([SPDM_VERSION_1_1, MEASUREMENTS, 0, slot_id, len(measurements)])
        + len(record).to_bytes(3, "little")
        + record
        + nonce
        + struct.pack("<H", len(opaque_data))
        + opaque_data
    )
