"""NVIDIA's opaque data in the SPDM MEASUREMENTS response: a list of TLV fields.

Each field is type (uint16 LE) ‖ length (uint16 LE) ‖ value. The field numbers are NVIDIA's
(as in nvtrust's verifier); values this project interprets are decoded here, the others are
kept as raw bytes so nothing in the signed data is dropped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attestation.errors import EvidenceFormatError

FIELD_NAMES: dict[int, str] = {
    1: "cert_issuer_name",
    2: "cert_authority_key_identifier",
    3: "driver_version",
    4: "gpu_info",
    5: "sku",
    6: "vbios_version",
    7: "manufacturer_id",
    8: "tamper_detection",
    9: "smc",
    10: "vpr",
    11: "nvdec0_status",
    12: "msrscnt",
    13: "cprinfo",
    14: "board_id",
    15: "chip_sku",
    16: "chip_sku_mod",
    17: "project",
    18: "project_sku",
    19: "project_sku_mod",
    20: "fwid",
    21: "protected_pcie_status",
    22: "switch_pdi",
    23: "floorswept_ports",
    24: "position_id",
    25: "lock_switch_status",
    32: "gpu_link_conn",
    33: "sys_enable_status",
    34: "opaque_data_version",
    35: "chip_info",
}
DRIVER_VERSION, VBIOS_VERSION, PROJECT, PROJECT_SKU, CHIP_SKU, FWID = 3, 6, 17, 18, 15, 20
_TEXT_FIELDS = {DRIVER_VERSION, CHIP_SKU, 16, PROJECT, PROJECT_SKU, 19}
_HEADER = struct.Struct("<HH")


@dataclass(frozen=True)
class OpaqueField:
    type: int
    value: bytes

    @property
    def name(self) -> str:
        return FIELD_NAMES.get(self.type, f"unknown_{self.type}")


@dataclass(frozen=True)
class OpaqueData:
    fields: tuple[OpaqueField, ...]

    def get(self, field_type: int) -> bytes | None:
        """The value of a field that must occur at most once."""
        found = [f.value for f in self.fields if f.type == field_type]
        if len(found) > 1:
            name = FIELD_NAMES.get(field_type, str(field_type))
            raise EvidenceFormatError(f"opaque data: field {name} occurs {len(found)} times, expected once")
        return found[0] if found else None

    def text(self, field_type: int) -> str | None:
        value = self.get(field_type)
        return None if value is None else decode_text(value)

    @property
    def driver_version(self) -> str | None:
        return self.text(DRIVER_VERSION)

    @property
    def vbios_version(self) -> str | None:
        value = self.get(VBIOS_VERSION)
        return None if value is None else format_vbios_version(value)

    @property
    def fwid(self) -> bytes | None:
        return self.get(FWID)

    def to_claims(self) -> dict[str, str]:
        """Every field as text (interpreted) or hex (raw); repeated fields get a #n suffix."""
        claims: dict[str, str] = {}
        for f in self.fields:
            key = f.name
            n = 2
            while key in claims:
                key, n = f"{f.name}#{n}", n + 1
            claims[key] = f.value.hex()
            try:
                if f.type == VBIOS_VERSION:
                    claims[key] = format_vbios_version(f.value)
                elif f.type in _TEXT_FIELDS:
                    claims[key] = decode_text(f.value)
            except EvidenceFormatError:
                pass  # kept as hex: a malformed field the verifier does not rely on
        return claims


def parse(data: bytes) -> OpaqueData:
    fields: list[OpaqueField] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            raise EvidenceFormatError(
                f"opaque data: {len(data) - offset} stray bytes at offset {offset}, "
                f"expected a {_HEADER.size}-byte field header"
            )
        field_type, size = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        if start + size > len(data):
            raise EvidenceFormatError(
                f"opaque data: field {field_type} at offset {offset} declares {size} bytes, "
                f"only {len(data) - start} remain"
            )
        fields.append(OpaqueField(field_type, data[start : start + size]))
        offset = start + size
    return OpaqueData(tuple(fields))


def encode(fields: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_HEADER.pack(t, len(v)) + v for t, v in fields)


def decode_text(value: bytes) -> str:
    """A NUL-terminated (or NUL-padded) ASCII string."""
    text = value.split(b"\x00", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EvidenceFormatError(f"opaque data: expected ASCII text, found {value.hex()}") from exc


def format_vbios_version(value: bytes) -> str:
    """VBIOS version as NVIDIA prints it (xx.xx.xx.xx.xx), from the 8-byte LE field.

    The field read as a little-endian integer gives hex digits HHHHHHHH LLLLLLLL; the version
    is the four bytes of the low half (most significant first) followed by the last byte of
    the high half: 009f009601000000 → 0x0000000196009F00 → 96.00.9F.00.01. This matches
    nvtrust's format_vbios_version and the RIM file names (…_96005E0001 ↔ 96.00.5E.00.01).
    """
    if len(value) != 8:
        raise EvidenceFormatError(f"opaque data: vbios_version must be 8 bytes, found {len(value)}")
    digits = value[::-1].hex().upper()
    low, high = digits[8:], digits[:8]
    return ".".join([low[i : i + 2] for i in range(0, 8, 2)] + [high[6:8]])
