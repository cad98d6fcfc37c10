"""The TDX quote parser against the real vectors, truncation, oversize and random input."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceFormatError
from attestation.tdx import quote
from tests.tdx_helpers import quote_bytes

# (name, version, body_type, parsed length, trailing, MRTD prefix, QE ISVSVN) per MANIFEST.md.
EXPECTED = [
    ("go_v4", 4, 2, 4935, 39, "6363b8043668a3ad953278e10389574d", 4),
    ("go_v5", 5, 3, 5006, 0, "7348651a34b2d2d3462822e3a750ec61", 7),
    ("go_cos", 4, 2, 4935, 8000 - 4935, "dae67181d3d65e07", 6),
    ("trustee_4", 4, 2, 4936, 0, "705ee9381b8633a9fbe532b52345e843", 4),
    ("trustee_5", 5, 3, 5006, 0, "dfba221b48a22af8511542ee796603f3", 6),
    ("trustee_6", 4, 2, 4936, 70, "21e8dead92d6c69d", 7),
    ("azure", 4, 2, 4936, 70, "024a32b070383331", 5),
]


@pytest.mark.parametrize(("name", "version", "body_type", "length", "trailing", "mrtd", "qe_svn"), EXPECTED)
def test_vectors_parse_as_manifest_says(name, version, body_type, length, trailing, mrtd, qe_svn):
    q = quote.parse(quote_bytes(name))
    assert (q.header.version, q.body_type, q.length, q.trailing) == (version, body_type, length, trailing)
    assert q.body.mrtd.hex().startswith(mrtd)
    assert q.qe_report.isvsvn == qe_svn
    assert q.header.tee_type == 0x81 and q.header.att_key_type == 2
    assert q.header.qe_vendor_id == quote.INTEL_QE_VENDOR_ID
    assert q.qe_report.mrsigner.hex() == "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
    assert q.qe_report.isvprodid == 2
    assert len(q.qe_auth_data) == 32
    assert q.pck_chain_pem.count(b"-----BEGIN CERTIFICATE-----") == 3


def test_td15_fields_and_signed_region():
    q5 = quote.parse(quote_bytes("trustee_5"))
    assert q5.body.mrservicetd is not None and q5.body.mrservicetd.hex().startswith("383c87d3")
    assert q5.body.tee_tcb_svn.hex().startswith("05010200")
    assert len(q5.signed) == 48 + 2 + 4 + 648
    q4 = quote.parse(quote_bytes("trustee_6"))
    assert q4.body.mrservicetd is None and q4.body.tee_tcb_svn2 is None
    assert len(q4.signed) == 48 + 584


def test_debug_bit_decoded():
    assert quote.parse(quote_bytes("trustee_4")).body.debug is True
    assert quote.parse(quote_bytes("trustee_6")).body.debug is False
    claims = quote.body_claims(quote.parse(quote_bytes("trustee_4")).body)
    assert claims["debug"] is True and claims["td_attributes"] == "0100001000000000"


def test_trailing_bytes_do_not_enter_the_parsed_quote():
    data = quote_bytes("go_v4")
    assert data[4935:] == b"\nextra bytes(only for testing purpose)\n"
    assert quote.parse(data) == replace(quote.parse(data[:4935]), trailing=39)


@pytest.mark.parametrize("name", ["trustee_4", "trustee_5"])
def test_every_truncation_is_rejected(name):
    data = quote_bytes(name)
    for cut in range(len(data)):
        with pytest.raises(EvidenceFormatError):
            quote.parse(data[:cut])


def test_oversized_input_rejected():
    with pytest.raises(EvidenceFormatError, match="larger than the 65536 bytes allowed"):
        quote.parse(quote_bytes("trustee_4") + bytes(quote.MAX_QUOTE_BYTES))


def _v5_from_v4(v4: bytes, body_type: int, body_size: int) -> bytes:
    header = struct.pack("<H", 5) + v4[2:48]
    return header + struct.pack("<HI", body_type, body_size) + v4[48:]


def test_v5_with_td10_body_type_2_parses():
    v4 = quote_bytes("trustee_4")
    q = quote.parse(_v5_from_v4(v4, 2, 584))
    assert q.header.version == 5 and q.body_type == 2 and q.body.mrservicetd is None
    assert q.body == quote.parse(v4).body


@pytest.mark.parametrize(
    ("body_type", "size", "message"),
    [(1, 384, "body_type is 1"), (3, 584, "body_size is 584 for body_type 3"), (2, 648, "body_size is 648")],
)
def test_v5_body_descriptor_mismatch_rejected(body_type, size, message):
    with pytest.raises(EvidenceFormatError, match=message):
        quote.parse(_v5_from_v4(quote_bytes("trustee_4"), body_type, size))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, struct.pack("<H", 3), "version is 3, expected 4 or 5"),
        (2, struct.pack("<H", 3), "att_key_type is 3"),
        (4, struct.pack("<I", 0), "tee_type is 0x0, expected 0x81"),
    ],
)
def test_header_fields_enforced(offset, value, message):
    data = bytearray(quote_bytes("trustee_4"))
    data[offset : offset + len(value)] = value
    with pytest.raises(EvidenceFormatError, match=message):
        quote.parse(bytes(data))


def test_extra_bytes_inside_signature_data_rejected():
    data = bytearray(quote_bytes("trustee_4"))
    (sig_len,) = struct.unpack_from("<I", data, 632)
    data[632:636] = struct.pack("<I", sig_len + 1)
    with pytest.raises(EvidenceFormatError, match="unexpected bytes after certification_data"):
        quote.parse(bytes(data) + b"\x00")


def test_certification_data_type_enforced():
    data = bytearray(quote_bytes("trustee_4"))
    offset = 636 + 128
    assert struct.unpack_from("<H", data, offset)[0] == 6
    data[offset : offset + 2] = struct.pack("<H", 5)
    with pytest.raises(EvidenceFormatError, match=r"certification_data\.type is 5, expected 6"):
        quote.parse(bytes(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_random_bytes_only_raise_format_errors(blob):
    try:
        quote.parse(blob)
    except EvidenceFormatError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4935), st.binary(min_size=1, max_size=8))
def test_overwritten_length_fields_never_crash(pos, patch):
    data = bytearray(quote_bytes("trustee_4"))
    data[pos : pos + len(patch)] = patch
    try:
        q = quote.parse(bytes(data))
    except EvidenceFormatError:
        return
    assert q.length + q.trailing == len(data)
