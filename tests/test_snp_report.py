"""The ATTESTATION_REPORT parser, TCB decoding by product, product detection, VCEK extensions."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.errors import EvidenceFormatError
from attestation.sevsnp import products, report, vcek
from attestation.sevsnp.products import Product
from attestation.sevsnp.tcb import TcbVersion
from tests.snp_helpers import snp


@pytest.fixture(scope="module")
def gsg() -> bytes:
    return snp("go-sev-guest/attestation.bin")


@pytest.fixture(scope="module")
def virtee() -> bytes:
    return snp("virtee-sev/report_milan.bin")


def test_go_sev_guest_report_fields_match_manifest(gsg):
    rep = report.parse(gsg)
    assert rep.version == 2 and rep.vmpl == 0 and rep.signature_algo == 1
    assert rep.policy.raw == 0xB0000 and rep.policy.debug and not rep.policy.migrate_ma
    assert rep.signing_key_name == "vcek" and not rep.mask_chip_key
    assert rep.report_data == bytes([1, 2, 3, 4, 5]) + bytes(59)
    assert rep.measurement.hex() == (
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert rep.chip_id.hex().startswith("3ac3fe21e13fb099") and rep.chip_id.hex().endswith("006b5d")
    for field in ("reported_tcb", "current_tcb", "committed_tcb", "launch_tcb"):
        assert getattr(rep, field) == 0x4405000000000002
    tcb = rep.tcb("reported_tcb", Product.MILAN)
    assert tcb.parts() == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert rep.current_version == (1, 49, 3)
    assert rep.cpuid is None and rep.launch_mit_vector is None


def test_virtee_report_fields_match_manifest(virtee):
    rep = report.parse(virtee)
    assert rep.policy.raw == 0x30000 and not rep.policy.debug
    assert rep.report_data.hex().startswith("d447b55d197491bf") and rep.report_data.hex().endswith("6a93ebfd")
    assert rep.measurement.hex().startswith("7a1e5c266c0108dbc9bb94fa92695132")
    assert str(rep.tcb("reported_tcb", Product.MILAN)) == "bootloader=3 tee=0 snp=8 microcode=115"
    assert rep.committed_version == (1, 52, 4)


def test_json_has_hex_fields_and_split_tcb(virtee):
    out = report.parse(virtee).to_json(Product.MILAN)
    assert out["measurement"] == virtee[0x90:0xC0].hex()
    assert out["chip_id"] == virtee[0x1A0:0x1E0].hex()
    assert out["reported_tcb"] == {
        "raw": "7308000000000003",
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert out["policy"]["debug"] is False and out["policy"]["smt"] is True
    assert report.parse(virtee).to_json(None)["reported_tcb"] == {"raw": "7308000000000003"}


def _with(raw: bytes, off: int, fmt: str, value: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, off, value)
    return bytes(buf)


def test_version_3_and_5_fields(virtee):
    v3 = _with(_with(virtee, report.VERSION, "<I", 3), report.CPUID_FAM_ID, "<I", 0x011119)
    rep = report.parse(v3)
    assert rep.cpuid == (0x19, 0x11, 0x01) and rep.launch_mit_vector is None
    assert products.from_cpuid(*rep.cpuid[:2]) is Product.GENOA
    v5 = _with(_with(v3, report.VERSION, "<I", 5), report.LAUNCH_MIT_VECTOR, "<Q", 0x5)
    v5 = _with(v5, report.CURRENT_MIT_VECTOR, "<Q", 0x7)
    rep5 = report.parse(v5)
    assert (rep5.launch_mit_vector, rep5.current_mit_vector) == (5, 7)
    assert report.parse(v5).to_json(Product.GENOA)["current_mit_vector"] == "0000000000000007"


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_versions_rejected(virtee, version):
    with pytest.raises(EvidenceFormatError, match=f"VERSION is {version}"):
        report.parse(_with(virtee, report.VERSION, "<I", version))


@pytest.mark.parametrize(
    ("version", "offset"),
    [
        (2, 0x188),
        (2, 0x1F8),
        (3, 0x18B),
        (3, 0x200),
        (5, 0x208),
        (5, 0x29F),
        (2, 0x04C),
        (2, 0x1EB),
        (2, 0x4A0 - 1),
    ],
)
def test_reserved_bytes_must_be_zero(virtee, version, offset):
    raw = bytearray(_with(virtee, report.VERSION, "<I", version))
    raw[offset] = 0x80
    with pytest.raises(EvidenceFormatError, match=f"reserved byte at 0x{offset:03X}"):
        report.parse(bytes(raw))


def test_key_info_reserved_bits_rejected(virtee):
    with pytest.raises(EvidenceFormatError, match="bits 31:5"):
        report.parse(_with(virtee, report.KEY_INFO, "<I", 1 << 5))


@pytest.mark.parametrize("size", [0, 1, 0x29F, 0x2A0, 0x49F, 0x4A1, 0x4A0 * 2])
def test_wrong_sizes_rejected_with_one_line(virtee, size):
    data = (virtee * 2)[:size]
    with pytest.raises(EvidenceFormatError) as err:
        report.parse(data)
    assert "expected 1184 (0x4A0) bytes" in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=0x600))
def test_arbitrary_bytes_parse_or_fail_cleanly(data):
    try:
        rep = report.parse(data)
    except EvidenceFormatError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert len(data) == report.REPORT_SIZE and rep.version in report.SUPPORTED_VERSIONS


@settings(max_examples=300, deadline=None)
@given(st.integers(0, report.REPORT_SIZE - 1), st.integers(1, 255))
def test_mutated_real_report_parses_or_fails_cleanly(offset, xor):
    raw = bytearray(snp("virtee-sev/report_milan.bin"))
    raw[offset] ^= xor
    try:
        rep = report.parse(bytes(raw))
    except EvidenceFormatError as exc:
        assert "\n" not in str(exc)
    else:
        assert rep.raw == bytes(raw)


def test_tcb_layout_differs_for_turin():
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 9]), "little")
    turin = TcbVersion.decode(raw, Product.TURIN)
    assert turin.parts() == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    assert not turin.reserved_nonzero
    milan = TcbVersion.decode(raw, Product.MILAN)
    assert (milan.bootloader, milan.tee, milan.snp, milan.microcode, milan.fmc) == (1, 2, 0, 9, None)
    assert milan.reserved_nonzero  # bytes 2-3 are reserved on Milan
    assert turin.below({"snp": 5, "fmc": 1}) == ["snp 4 < 5"]
    assert milan.below({"fmc": 0}) == ["fmc: not part of Milan"]


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, Product.MILAN),
        (0x19, 0x11, Product.GENOA),
        (0x19, 0xA0, Product.GENOA),
        (0x1A, 0x02, Product.TURIN),
        (0x1A, 0x11, Product.TURIN),
        (0x17, 0x31, None),
        (0x19, 0x21, None),
    ],
)
def test_product_from_cpuid(family, model, product):
    assert products.from_cpuid(family, model) is product


def test_product_names():
    assert products.from_product_name("Milan-B0") == (Product.MILAN, "B0")
    assert products.from_product_name("Turin") == (Product.TURIN, None)
    assert products.from_product_name("Venice-A0") == (None, None)
    assert products.from_issuer_cn("SEV-VLEK-Genoa") is Product.GENOA
    assert products.from_issuer_cn("SEV-Milan") is Product.MILAN
    assert products.parse("TURIN") is Product.TURIN
    with pytest.raises(EvidenceFormatError, match="expected one of milan, genoa, turin"):
        products.parse("rome")


def test_vcek_extensions_milan_and_turin():
    milan = vcek.parse(snp("go-sev-guest/vcek.testcer"))
    assert milan.kind == "vcek" and milan.product is Product.MILAN and milan.stepping == "B0"
    assert milan.spls == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert milan.hwid == report.parse(snp("go-sev-guest/attestation.bin")).chip_id
    turin = vcek.parse(snp("virtee-sev/vcek_turin.der"))
    assert turin.product is Product.TURIN and turin.issuer_cn == "SEV-Turin"
    assert turin.hwid == bytes.fromhex("1e550a8ee5cf9f4d")
    assert "fmc" in turin.spls and turin.spls["microcode"] == 9


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 1359), st.integers(1, 255))
def test_vcek_parser_never_raises_other_errors(offset, xor):
    der = bytearray(snp("virtee-sev/vcek_milan.der"))
    der[offset] ^= xor
    try:
        info = vcek.parse(bytes(der))
    except EvidenceFormatError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(info.spls, dict)
