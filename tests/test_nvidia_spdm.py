"""The SPDM 1.1 GET_MEASUREMENTS parser against the real Hopper report, and hostile input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceFormatError
from attestation.nvidia import opaque, spdm
from tests.nvidia_helpers import REPORT, REPORT_NONCE


@pytest.fixture(scope="module")
def report_text(vectors):
    return (vectors / REPORT).read_bytes()


@pytest.fixture(scope="module")
def raw(report_text):
    return bytes.fromhex(report_text.decode())


def test_real_report_fields_match_the_manifest(report_text):
    rep = spdm.parse(report_text)
    assert len(rep.raw) == 4117
    assert rep.raw[:4] == bytes.fromhex("11e001ff")
    assert rep.request.nonce == REPORT_NONCE
    assert rep.request.slot_id == 0 and rep.request.signature_requested
    resp = rep.response
    assert (resp.version, resp.code) == (0x11, 0x60)
    assert len(resp.blocks) == 64
    assert [b.index for b in resp.blocks] == list(range(1, 65))
    assert all(b.value_type == 1 and len(b.value) == 48 for b in resp.blocks)
    assert resp.measurement(4).value.hex().startswith("73bbf35822549e28ba8f")
    assert len(resp.signature) == 96
    assert resp.opaque.driver_version == "550.90.07"
    assert resp.opaque.get(opaque.VBIOS_VERSION) == bytes.fromhex("009f009601000000")
    assert resp.opaque.fwid.hex().startswith("f5c384ae")
    assert rep.signed_bytes == rep.raw[:-96]


def test_vbios_version_is_formatted_as_nvidia_prints_it(report_text):
    # 009f009601000000 read little-endian is 0x0000000196009F00: 96.00.9F.00 then 01.
    assert spdm.parse(report_text).response.opaque.vbios_version == "96.00.9F.00.01"
    # The RIM file name 1010_0200_882_96005E0001 and its colloquialVersion agree with this rule.
    assert opaque.format_vbios_version(bytes.fromhex("005e009601000000")) == "96.00.5E.00.01"


def test_raw_and_hex_and_spaced_hex_parse_to_the_same_report(report_text, raw):
    spaced = b"\n".join(report_text[i : i + 64] for i in range(0, len(report_text), 64)) + b"\n"
    assert spdm.parse(raw) == spdm.parse(report_text) == spdm.parse(spaced) == spdm.parse(report_text.upper())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "SPDMVersion at offset 0 needs 1 bytes"),
        (b"hello", "SPDMVersion expected 0x11 \\(SPDM 1.1\\), found 0x68"),
        (b"11e", "odd number of digits"),
        (b"  \n", "hex text has an odd|needs 1 bytes"),
        (b"\x11\xe0\x01", "Param2 at offset 3 needs 1 bytes"),
    ],
)
def test_garbage_is_a_format_error(data, message):
    with pytest.raises(EvidenceFormatError, match=message):
        spdm.parse(data)


def test_every_truncation_is_rejected(raw):
    for length in range(len(raw)):
        with pytest.raises(EvidenceFormatError):
            spdm.parse(raw[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 70, b"junk"])
def test_trailing_bytes_are_rejected(raw, extra):
    with pytest.raises(EvidenceFormatError, match="trailing"):
        spdm.parse(raw + extra)


def test_oversized_input_is_rejected(raw):
    with pytest.raises(EvidenceFormatError, match="allowed"):
        spdm.parse(raw + bytes(spdm.MAX_REPORT_BYTES))


def _patched(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


RESP = spdm.REQUEST_LEN


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x12", "SPDMVersion expected 0x11"),
        (1, b"\xe1", "RequestResponseCode expected 0xe0"),
        (2, b"\x00", "does not request a signature"),
        (RESP, b"\x12", "SPDMVersion"),
        (RESP + 1, b"\x61", "RequestResponseCode expected 0x60"),
        (RESP + 4, b"\x3f", "NumberOfBlocks is 63"),
        (RESP + 5, b"\xbf", "MeasurementRecord|DMTFSpecMeasurementValue|needs"),
        (RESP + 9, b"\x02", "MeasurementSpecification"),
        (RESP + 8 + 55, b"\x01", "Index occurs twice"),
    ],
)
def test_field_errors_name_the_field(raw, offset, value, message):
    with pytest.raises(EvidenceFormatError, match=message):
        spdm.parse(_patched(raw, offset, value))


def test_opaque_length_overrun_is_rejected(raw):
    rep = spdm.parse(raw)
    opaque_len_at = len(raw) - 96 - len(rep.response.opaque_raw) - 2
    assert struct.unpack_from("<H", raw, opaque_len_at)[0] == 422
    with pytest.raises(EvidenceFormatError):
        spdm.parse(_patched(raw, opaque_len_at, struct.pack("<H", 423)))


def test_opaque_tlv_errors():
    with pytest.raises(EvidenceFormatError, match="stray bytes"):
        opaque.parse(b"\x03\x00\x02")
    with pytest.raises(EvidenceFormatError, match="declares 5 bytes"):
        opaque.parse(b"\x03\x00\x05\x00abc")
    twice = opaque.parse(opaque.encode([(20, b"a"), (20, b"b")]))
    with pytest.raises(EvidenceFormatError, match="occurs 2 times"):
        _ = twice.fwid
    assert twice.to_claims() == {"fwid": "61", "fwid#2": "62"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_format_errors(data):
    for candidate in (data, b"\x11\xe0\x01\xff" + data, data.hex().encode()):
        with contextlib.suppress(EvidenceFormatError):
            spdm.parse(candidate)


_measurements = st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=20)
_fields = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=10)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), _measurements, _fields, st.binary(min_size=32, max_size=32))
def test_encode_then_parse_round_trips(nonce, values, fields, responder_nonce):
    measurements = list(enumerate(values, start=1))
    body = spdm.encode_request(nonce) + spdm.encode_response_unsigned(
        measurements, responder_nonce, opaque.encode(fields)
    )
    rep = spdm.parse(body + bytes(96))
    assert rep.request.nonce == nonce
    assert rep.response.nonce == responder_nonce
    assert [(b.index, b.value) for b in rep.response.blocks] == measurements
    assert [(f.type, f.value) for f in rep.response.opaque.fields] == fields
    assert rep.signed_bytes == body


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_truncated_or_extended_mutation_of_a_valid_report_is_a_format_error_or_parses(data):
    body = spdm.encode_request(bytes(32)) + spdm.encode_response_unsigned([(1, bytes(48))], bytes(32), b"")
    blob = bytearray(body + bytes(96))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] = data.draw(st.integers(0, 255))
    try:
        rep = spdm.parse(bytes(blob))
    except EvidenceFormatError:
        return
    assert rep.raw == bytes(blob)
