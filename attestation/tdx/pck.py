"""Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1), read with a small DER reader.

Intel SGX PCK Certificate and CRL Profile: the extension value is a SEQUENCE of
SEQUENCE { OID, value }; we need PPID, TCB (16 component SVNs, PCESVN, CPUSVN), PCE-ID and
FMSPC, and refuse a certificate where any of them is missing, repeated or mis-sized.

The reader accepts DER only (definite, minimal lengths and tags, minimal INTEGERs, canonical
OIDs, nothing after the outer SEQUENCE or inside an entry after its value): it is at least as
strict as the asn1crypto parse it replaced (tests/test_tdx_pck_der.py compares the two on real
and mutated extensions), and ten times faster, which matters on a new platform's first quote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509

from attestation.errors import EvidenceFormatError

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSIONS_OID + ".1"
_TCB = SGX_EXTENSIONS_OID + ".2"
_PCEID = SGX_EXTENSIONS_OID + ".3"
_FMSPC = SGX_EXTENSIONS_OID + ".4"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
TCB_COMPONENTS = 16

_SEQUENCE, _OID, _OCTETS, _INTEGER = 0x30, 0x06, 0x04, 0x02
_MAX_LENGTH_OCTETS = 3  # the extension lies inside a certificate of at most 256 KiB


@dataclass(frozen=True)
class PckExtensions:
    ppid: bytes
    fmspc: bytes
    pceid: bytes
    pcesvn: int
    cpusvn: bytes
    tcb_components: tuple[int, ...]


class _Tlv(NamedTuple):
    tag: bytes
    content: bytes
    end: int


_NON_MINIMAL_ARC = re.compile(rb"(?:^|[\x00-\x7f])\x80")


def _bad(where: str, what: str) -> EvidenceFormatError:
    return EvidenceFormatError(f"PCK certificate: {where} is not DER: {what}")


def _tlv(data: bytes, pos: int, where: str) -> _Tlv:
    """One DER element at `pos`: identifier octets (any class, minimal high tag), definite minimal length."""
    if pos + 1 < len(data) and data[pos] & 0x1F != 0x1F and data[pos + 1] < 0x80:  # low tag, short length
        end = pos + 2 + data[pos + 1]
        if end <= len(data):
            return _Tlv(data[pos : pos + 1], data[pos + 2 : end], end)
    return _tlv_general(data, pos, where)


def _tlv_general(data: bytes, pos: int, where: str) -> _Tlv:
    start = pos
    if pos >= len(data):
        raise _bad(where, f"element expected at offset {pos}, found the end")
    first = data[pos]
    pos += 1
    if first & 0x1F == 0x1F:  # high tag number: base-128, minimal, at most 4 octets
        if pos >= len(data) or data[pos] == 0x80:
            raise _bad(where, f"malformed high tag number at offset {start}")
        while pos < len(data) and data[pos] & 0x80:
            pos += 1
        pos += 1
        if pos - start > 5:
            raise _bad(where, f"tag number too long at offset {start}")
    if pos >= len(data):
        raise _bad(where, f"length expected at offset {pos}, found the end")
    tag, octet = data[start:pos], data[pos]
    pos += 1
    if octet < 0x80:
        length = octet
    else:
        count = octet & 0x7F
        if count == 0 or count > _MAX_LENGTH_OCTETS or pos + count > len(data):
            raise _bad(
                where, f"length form 0x{octet:02x} at offset {pos - 1} (indefinite, too long or truncated)"
            )
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise _bad(where, f"non-minimal length at offset {pos - 1}")
        pos += count
    if pos + length > len(data):
        raise _bad(
            where, f"element at offset {start} runs {pos + length - len(data)} bytes past its container"
        )
    return _Tlv(tag, data[pos : pos + length], pos + length)


def _children(content: bytes, where: str) -> list[_Tlv]:
    out, pos = [], 0
    while pos < len(content):
        child = _tlv(content, pos, where)
        out.append(child)
        pos = child.end
    return out


def _oid(content: bytes, where: str) -> bytes:
    """The OID's content octets, refused unless canonical (so equal OIDs have equal bytes)."""
    if not content or content[-1] & 0x80 or _NON_MINIMAL_ARC.search(content):
        raise _bad(where, f"OBJECT IDENTIFIER {content.hex()} empty, truncated or not minimally encoded")
    return content


def _dotted(content: bytes) -> str:
    arcs, value = [], 0
    for octet in content:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _encoded(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in (40 * arcs[0] + arcs[1], *arcs[2:]):
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return bytes(out)


_COMPONENTS = tuple(f"{_TCB}.{i}" for i in range(1, TCB_COMPONENTS + 1))
_KNOWN = {
    dotted: _encoded(dotted) for dotted in (_PPID, _TCB, _PCEID, _FMSPC, _PCESVN, _CPUSVN, *_COMPONENTS)
}


def _entries(der: bytes, where: str) -> dict[bytes, _Tlv]:
    """SEQUENCE OF SEQUENCE { OID, value } filling `der` exactly, OIDs unique."""
    outer = _tlv(der, 0, where)
    if outer.tag != bytes([_SEQUENCE]) or outer.end != len(der):
        raise EvidenceFormatError(f"PCK certificate: {where} is not exactly one SEQUENCE of (OID, value)")
    return _entries_in(outer.content, where)


def _entries_in(content: bytes, where: str) -> dict[bytes, _Tlv]:
    """Values by the OID's content octets (canonical, so unique per OID)."""
    out: dict[bytes, _Tlv] = {}
    for entry in _children(content, where):
        parts = _children(entry.content, where) if entry.tag == bytes([_SEQUENCE]) else []
        if len(parts) != 2 or parts[0].tag != bytes([_OID]):
            raise EvidenceFormatError(
                f"PCK certificate: {where} has an entry that is not SEQUENCE {{OID, value}}"
            )
        oid = _oid(parts[0].content, where)
        if oid in out:
            raise EvidenceFormatError(f"PCK certificate: {where} repeats {_dotted(oid)}")
        out[oid] = parts[1]
    return out


def _get(entries: dict[bytes, _Tlv], oid: str, tag: int, kind: str, where: str) -> bytes:
    value = entries.get(_KNOWN[oid])
    if value is None:
        raise EvidenceFormatError(f"PCK certificate: {where} lacks {oid}")
    if value.tag != bytes([tag]):
        raise EvidenceFormatError(f"PCK certificate: {oid} is not a {kind}: tag 0x{value.tag.hex()}")
    return value.content


def _octets(entries: dict[bytes, _Tlv], oid: str, size: int, name: str) -> bytes:
    value = _get(entries, oid, _OCTETS, "OctetString", "SGX extensions")
    if len(value) != size:
        raise EvidenceFormatError(f"PCK certificate: {name} ({oid}) is {len(value)} bytes, expected {size}")
    return value


def _svn(entries: dict[bytes, _Tlv], oid: str, name: str, limit: int) -> int:
    raw = _get(entries, oid, _INTEGER, "Integer", "SGX TCB extension")
    if not raw or (len(raw) > 1 and (raw[0], raw[1] & 0x80) in ((0, 0), (0xFF, 0x80))):
        raise EvidenceFormatError(f"PCK certificate: {name} ({oid}) is not a minimal DER INTEGER")
    value = int.from_bytes(raw, "big", signed=True)
    if not 0 <= value <= limit:
        raise EvidenceFormatError(f"PCK certificate: {name} ({oid}) is {value}, expected 0..{limit}")
    return value


def parse_extension_value(der: bytes) -> PckExtensions:
    """The SGX extensions from the extension's DER value (the OCTET STRING's content)."""
    top = _entries(der, "SGX extensions")
    tcb_value = top.get(_KNOWN[_TCB])
    if tcb_value is None:
        raise EvidenceFormatError(f"PCK certificate: SGX extensions lack TCB ({_TCB})")
    if tcb_value.tag != bytes([_SEQUENCE]):
        raise EvidenceFormatError(f"PCK certificate: TCB ({_TCB}) is not a SEQUENCE")
    tcb = _entries_in(tcb_value.content, "SGX TCB extension")
    components = tuple(
        _svn(tcb, oid, f"SGX TCB component {i}", 255) for i, oid in enumerate(_COMPONENTS, start=1)
    )
    return PckExtensions(
        ppid=_octets(top, _PPID, 16, "PPID"),
        fmspc=_octets(top, _FMSPC, 6, "FMSPC"),
        pceid=_octets(top, _PCEID, 2, "PCE-ID"),
        pcesvn=_svn(tcb, _PCESVN, "PCESVN", 0xFFFF),
        cpusvn=_octets(tcb, _CPUSVN, 16, "CPUSVN"),
        tcb_components=components,
    )


def parse_extensions(cert: x509.Certificate) -> PckExtensions:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound as exc:
        raise EvidenceFormatError("PCK certificate: no Intel SGX extensions (1.2.840.113741.1.13.1)") from exc
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    return parse_extension_value(ext.value.value)
