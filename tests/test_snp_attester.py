"""SnpAttester through a fake configfs-tsm kernel and a fake /dev/sev-guest, then the verifier.

The fakes return a REAL vector report (virtee-sev report_milan.bin) because nothing here can
sign a fresh one; so end to end, the verifier must reject report_data and accept all else.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import attester_for, binding, detect, verifier_for
from attestation.errors import AttesterFailure, AttesterUnavailable, EvidenceFormatError
from attestation.evidence import Trust
from attestation.sevsnp import certtable
from attestation.sevsnp import ioctl as sevguest
from attestation.sevsnp.attester import SnpAttester
from attestation.sevsnp.products import Product
from attestation.sevsnp.roots import bundled_chain
from tests.fake_tsm import FakeTsmKernel
from tests.snp_helpers import AT_2026, FakeSevGuest, der, fake_device_tree, snp


@pytest.fixture(scope="module")
def vector() -> tuple[bytes, bytes]:
    return snp("virtee-sev/report_milan.bin"), snp("virtee-sev/vcek_milan.der")


@pytest.fixture(scope="module")
def table(vector) -> bytes:
    ask, ark = bundled_chain(Product.MILAN, "vcek")
    entries = [
        (certtable.VCEK_GUID, vector[1]),
        (certtable.ASK_GUID, der(ask)),
        (certtable.ARK_GUID, der(ark)),
    ]
    return certtable.build(entries, pad_to=3 * 4096)


@pytest.fixture(scope="module")
def bound() -> bytes:
    """report_data as the loader computes it for a fresh key and nonce."""
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return binding.report_data(spki, hashlib.sha256(b"test nonce").digest())


def kernel(report: bytes, aux: bytes, seen: list | None = None, provider: str = "sev_guest") -> FakeTsmKernel:
    def quote(inblob: bytes, privlevel: int | None) -> tuple[bytes, bytes]:
        if seen is not None:
            seen.append((inblob, privlevel))
        return report, aux

    return FakeTsmKernel(root=Path("/fake"), provider=provider, quote=quote)


def assert_only_report_data_fails(evidence, bound: bytes) -> None:
    result = verifier_for("sev-snp").verify(evidence, expected_report_data=bound, trust=Trust(), at=AT_2026)
    assert [c.name for c in result.failures] == ["report_data"]
    passed = {c.name for c in result.checks if c.passed}
    assert {"format", "certificate", "report_signature", "chain", "hwid", "tcb", "policy_debug"} <= passed


def test_configfs_end_to_end(vector, table, bound):
    seen: list = []
    att = attester_for("sev-snp", root=Path("/fake"), ops=kernel(vector[0], table, seen), privlevel=1)
    evidence = att.collect(bound)
    assert seen and set(seen) == {(bound, 1)}  # outblob and auxblob reads of one entry
    assert evidence.type == "sev-snp" and evidence.data == vector[0]
    assert evidence.aux["vcek"] == vector[1]
    assert evidence.aux["chain"].count(b"BEGIN CERTIFICATE") == 2
    assert_only_report_data_fails(evidence, bound)


def test_device_end_to_end_when_configfs_is_missing(tmp_path, vector, table, bound):
    root = fake_device_tree(tmp_path)
    dev = FakeSevGuest(vector[0], table)
    att = attester_for("sev-snp", root=root, ioctl=dev, privlevel=2)
    evidence = att.collect(bound)
    assert dev.calls[-1] == (sevguest.SNP_GET_EXT_REPORT, bound, 2)
    assert evidence.data == vector[0] and evidence.aux["vcek"] == vector[1]
    assert_only_report_data_fails(evidence, bound)


def test_device_retries_with_the_length_the_host_asks_for(tmp_path, vector, bound):
    big = certtable.build([(certtable.VCEK_GUID, vector[1])], pad_to=sevguest.CERTS_MAX)
    oversize = FakeSevGuest(vector[0], big + bytes(4096))
    with pytest.raises(AttesterFailure, match="needs 20480 bytes"):
        SnpAttester(fake_device_tree(tmp_path), ioctl=oversize).collect(bound)


def test_device_without_ext_report_falls_back_to_get_report(tmp_path, vector, bound):
    dev = FakeSevGuest(vector[0], b"", ext_supported=False)
    evidence = SnpAttester(fake_device_tree(tmp_path), ioctl=dev).collect(bound)
    assert [c[0] for c in dev.calls] == [sevguest.SNP_GET_REPORT]
    assert evidence.aux == {}
    result = verifier_for("sev-snp").verify(
        evidence, expected_report_data=bound, trust=Trust(collateral={"vcek": vector[1]}), at=AT_2026
    )
    assert [c.name for c in result.failures] == ["report_data"]


def test_firmware_error_status_is_a_failure(tmp_path, vector, bound):
    dev = FakeSevGuest(vector[0], b"", status=0x16)
    with pytest.raises(AttesterFailure, match="firmware error 0x16"):
        SnpAttester(fake_device_tree(tmp_path), ioctl=dev).collect(bound)


def test_truncated_report_from_device_is_a_failure(tmp_path, vector, bound):
    dev = FakeSevGuest(vector[0][:-1], b"")
    with pytest.raises(AttesterFailure, match="REPORT_SIZE is 1183"):
        SnpAttester(fake_device_tree(tmp_path), ioctl=dev).collect(bound)


def test_malformed_report_from_configfs_is_a_failure(vector, bound):
    att = SnpAttester(Path("/fake"), ops=kernel(vector[0] + b"\0", b""))
    with pytest.raises(AttesterFailure, match="trailing data"):
        att.collect(bound)


def test_no_interface_at_all_is_unavailable(tmp_path, bound):
    with pytest.raises(AttesterUnavailable, match="dev/sev-guest not found"):
        SnpAttester(tmp_path).collect(bound)


def test_configfs_of_another_tee_is_not_used(tmp_path, vector, bound):
    att = SnpAttester(
        Path("/fake"), ops=kernel(vector[0], b"", provider="tdx_guest"), interface="configfs-tsm"
    )
    with pytest.raises(AttesterUnavailable, match="expected 'sev_guest'"):
        att.collect(bound)


def test_options_are_checked(tmp_path):
    with pytest.raises(AttesterFailure, match="privlevel"):
        SnpAttester(tmp_path, privlevel=4)
    with pytest.raises(AttesterFailure, match="unknown options"):
        SnpAttester(tmp_path, vmpl=0)
    with pytest.raises(AttesterFailure, match="interface"):
        SnpAttester(tmp_path, interface="tpm")
    with pytest.raises(AttesterFailure, match="64 bytes"):
        SnpAttester(tmp_path).collect(b"short")


def test_extend_keeps_an_event_log(tmp_path):
    att = SnpAttester(tmp_path)
    att.extend(b"\x01" * 48, "engine")
    assert att.events == [("engine", b"\x01" * 48)]
    with pytest.raises(AttesterFailure):
        att.extend(b"", "empty")


def test_detect_finds_the_device(tmp_path):
    assert detect(fake_device_tree(tmp_path)) == "sev-snp"


def test_ioctl_layouts_match_the_kernel_header():
    # linux/include/uapi/linux/sev-guest.h on x86-64.
    assert ctypes.sizeof(sevguest.SnpReportReq) == 96
    assert ctypes.sizeof(sevguest.SnpReportResp) == 4000
    assert ctypes.sizeof(sevguest.SnpExtReportReq) == 112
    assert sevguest.SnpExtReportReq.certs_address.offset == 96
    assert sevguest.SnpExtReportReq.certs_len.offset == 104
    assert ctypes.sizeof(sevguest.SnpGuestRequestIoctl) == 32
    assert [
        sevguest.SnpGuestRequestIoctl.req_data.offset,
        sevguest.SnpGuestRequestIoctl.exitinfo2.offset,
    ] == [8, 24]
    assert (sevguest.SNP_GET_REPORT, sevguest.SNP_GET_EXT_REPORT) == (0xC0205300, 0xC0205302)


# ------------------------------------------------ certificate table


def test_cert_table_round_trip(vector, table):
    parsed = certtable.parse(table)
    assert [g for g, _ in parsed.entries] == [certtable.VCEK_GUID, certtable.ASK_GUID, certtable.ARK_GUID]
    assert parsed.get(certtable.VCEK_GUID) == vector[1]
    assert parsed.get(certtable.VLEK_GUID) is None
    assert certtable.VCEK_GUID.bytes.hex() == "63da758de6644564adc5f4b93be8accd"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[:20], "missing all-zero terminator"),
        (lambda t: t[:24] + t[:24] + t[48:], "appears twice"),
        (lambda t: t[:16] + (10**6).to_bytes(4, "little") + t[20:], "outside the certificate area"),
        (lambda t: t[:20] + (0).to_bytes(4, "little") + t[24:], "outside the certificate area"),
        (lambda t: t[:-1] + b"\x01", "non-zero byte"),
        (lambda t: t + bytes(certtable.MAX_TABLE_BYTES), "more than"),
    ],
)
def test_cert_table_bounds(table, mutate, message):
    with pytest.raises(EvidenceFormatError, match=message):
        certtable.parse(mutate(table))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_cert_table_arbitrary_bytes(blob):
    try:
        parsed = certtable.parse(blob)
    except EvidenceFormatError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(len(b) > 0 for _, b in parsed.entries)
