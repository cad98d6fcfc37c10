"""The SGX extension reader (attestation/tdx/pck.py) against an asn1crypto oracle.

The oracle is the asn1crypto parse the reader replaced, kept here only to compare with: on every
real PCK leaf both give the same values, and on mutated extensions the reader either refuses or
gives exactly what the oracle gives (it is never more lenient).
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from asn1crypto import core
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceFormatError
from attestation.tdx import pck, quote, verifier
from tests.tdx_helpers import QUOTES, quote_bytes


class _Entry(core.Sequence):
    _fields: ClassVar = [("id", core.ObjectIdentifier), ("value", core.Any)]


class _Entries(core.SequenceOf):
    _child_spec = _Entry


def _oracle(der: bytes) -> tuple[object, ...]:
    """(ppid, fmspc, pceid, pcesvn, cpusvn, components) as asn1crypto reads them; raises otherwise."""

    def entries(data: bytes) -> dict[str, core.Asn1Value]:
        out: dict[str, core.Asn1Value] = {}
        for entry in _Entries.load(data, strict=True):
            oid = entry["id"].dotted
            if oid in out:
                raise ValueError("repeated")
            out[oid] = entry["value"]
        return out

    def octets(e: dict, oid: str, size: int) -> bytes:
        value = e[oid].parse(core.OctetString).native
        if len(value) != size:
            raise ValueError("size")
        return value

    def svn(e: dict, oid: str, limit: int) -> int:
        value = e[oid].parse(core.Integer).native
        if not 0 <= value <= limit:
            raise ValueError("range")
        return value

    top = entries(der)
    tcb = entries(top[pck._TCB].dump())
    return (
        octets(top, pck._PPID, 16),
        octets(top, pck._FMSPC, 6),
        octets(top, pck._PCEID, 2),
        svn(tcb, pck._PCESVN, 0xFFFF),
        octets(tcb, pck._CPUSVN, 16),
        tuple(svn(tcb, oid, 255) for oid in pck._COMPONENTS),
    )


def _mine(der: bytes) -> tuple[object, ...]:
    e = pck.parse_extension_value(der)
    return (e.ppid, e.fmspc, e.pceid, e.pcesvn, e.cpusvn, e.tcb_components)


def _value(name: str) -> bytes:
    leaf = verifier._pck_chain_certs(quote.parse(quote_bytes(name)))[0]
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(pck.SGX_EXTENSIONS_OID)).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    return ext.value


REAL = [_value(name) for name in QUOTES if name != "azure"]


@pytest.mark.parametrize("der", REAL)
def test_real_extensions_read_as_the_oracle_reads_them(der: bytes) -> None:
    assert _mine(der) == _oracle(der)


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(REAL) - 1),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xid")), min_size=1, max_size=3
    ),
)
def test_mutated_extensions_are_refused_or_read_as_the_oracle_reads_them(which: int, edits: list) -> None:
    der = bytearray(REAL[which])
    for pos, byte, kind in edits:
        pos %= len(der) + 1
        if kind == "x" and pos < len(der):
            der[pos] ^= byte or 1
        elif kind == "i":
            der[pos:pos] = bytes([byte])
        elif kind == "d" and pos < len(der):
            del der[pos]
    try:
        mine = _mine(bytes(der))
    except EvidenceFormatError:
        return
    assert mine == _oracle(bytes(der))


TOP = REAL[0]


@pytest.mark.parametrize(
    ("case", "der"),
    [
        ("trailing byte", TOP + b"\x00"),
        ("indefinite length", b"\x30\x80" + TOP[4:] + b"\x00\x00"),
        ("non-minimal length", b"\x30\x83\x00" + TOP[2:]),
        ("not a SEQUENCE", b"\x31" + TOP[1:]),
        ("empty", b""),
        ("truncated", TOP[:-1]),
    ],
)
def test_non_der_forms_are_refused(case: str, der: bytes) -> None:
    with pytest.raises(EvidenceFormatError, match="PCK certificate"):
        pck.parse_extension_value(der)


def test_a_repeated_or_non_minimal_oid_is_refused() -> None:
    entry = bytes.fromhex("3010060a2a864886f84d010d0104" + "0402") + b"\x00\x11"  # synthetic FMSPC-like entry
    body = TOP[4:] if TOP[1] == 0x82 else TOP[2:]
    for der in (
        _sequence(body + entry + entry),
        _sequence(bytes.fromhex("3011060b2a864886f84d01800d0104" + "0402") + b"\x00\x11" + body),
    ):
        with pytest.raises(EvidenceFormatError):
            pck.parse_extension_value(der)


def _sequence(content: bytes) -> bytes:
    return b"\x30\x82" + len(content).to_bytes(2, "big") + content
