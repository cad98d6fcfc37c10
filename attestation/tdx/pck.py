"""Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1), parsed with asn1crypto.

Intel SGX PCK Certificate and CRL Profile: the extension value is a SEQUENCE of
SEQUENCE { OID, value }; we need PPID, TCB (16 component SVNs, PCESVN, CPUSVN), PCE-ID and
FMSPC, and refuse a certificate where any of them is missing, repeated or mis-sized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from asn1crypto import core
from cryptography import x509

from attestation.errors import ASN1_PARSE_ERRORS, EvidenceFormatError

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSIONS_OID + ".1"
_TCB = SGX_EXTENSIONS_OID + ".2"
_PCEID = SGX_EXTENSIONS_OID + ".3"
_FMSPC = SGX_EXTENSIONS_OID + ".4"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
TCB_COMPONENTS = 16


class _Entry(core.Sequence):
    _fields: ClassVar = [("id", core.ObjectIdentifier), ("value", core.Any)]


class _Entries(core.SequenceOf):
    _child_spec = _Entry


@dataclass(frozen=True)
class PckExtensions:
    ppid: bytes
    fmspc: bytes
    pceid: bytes
    pcesvn: int
    cpusvn: bytes
    tcb_components: tuple[int, ...]


def _entries(der: bytes, where: str) -> dict[str, core.Asn1Value]:
    try:
        parsed = _Entries.load(der, strict=True)
        out: dict[str, core.Asn1Value] = {}
        for entry in parsed:
            oid = entry["id"].dotted
            if oid in out:
                raise EvidenceFormatError(f"PCK certificate: {where} repeats {oid}")
            out[oid] = entry["value"]
        return out
    except ASN1_PARSE_ERRORS as exc:
        raise EvidenceFormatError(
            f"PCK certificate: {where} is not a SEQUENCE of (OID, value): {exc}"
        ) from exc


def _get(entries: dict[str, core.Asn1Value], oid: str, spec: type[core.Asn1Value], where: str) -> object:
    if oid not in entries:
        raise EvidenceFormatError(f"PCK certificate: {where} lacks {oid}")
    try:
        return entries[oid].parse(spec).native
    except ASN1_PARSE_ERRORS as exc:
        raise EvidenceFormatError(f"PCK certificate: {oid} is not a {spec.__name__}: {exc}") from exc


def _octets(entries: dict[str, core.Asn1Value], oid: str, size: int, name: str) -> bytes:
    value = _get(entries, oid, core.OctetString, "SGX extensions")
    assert isinstance(value, bytes)
    if len(value) != size:
        raise EvidenceFormatError(f"PCK certificate: {name} ({oid}) is {len(value)} bytes, expected {size}")
    return value


def _svn(entries: dict[str, core.Asn1Value], oid: str, name: str, limit: int) -> int:
    value = _get(entries, oid, core.Integer, "SGX TCB extension")
    assert isinstance(value, int)
    if not 0 <= value <= limit:
        raise EvidenceFormatError(f"PCK certificate: {name} ({oid}) is {value}, expected 0..{limit}")
    return value


def parse_extensions(cert: x509.Certificate) -> PckExtensions:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound as exc:
        raise EvidenceFormatError("PCK certificate: no Intel SGX extensions (1.2.840.113741.1.13.1)") from exc
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    top = _entries(ext.value.value, "SGX extensions")
    if _TCB not in top:
        raise EvidenceFormatError(f"PCK certificate: SGX extensions lack TCB ({_TCB})")
    tcb = _entries(top[_TCB].dump(), "SGX TCB extension")
    components = tuple(
        _svn(tcb, f"{_TCB}.{i}", f"SGX TCB component {i}", 255) for i in range(1, TCB_COMPONENTS + 1)
    )
    return PckExtensions(
        ppid=_octets(top, _PPID, 16, "PPID"),
        fmspc=_octets(top, _FMSPC, 6, "FMSPC"),
        pceid=_octets(top, _PCEID, 2, "PCE-ID"),
        pcesvn=_svn(tcb, _PCESVN, "PCESVN", 0xFFFF),
        cpusvn=_octets(tcb, _CPUSVN, 16, "CPUSVN"),
        tcb_components=components,
    )
