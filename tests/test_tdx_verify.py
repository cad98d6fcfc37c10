"""TDX quote verification against the real vectors, with and without Intel collateral."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization

from attestation.evidence import Evidence, Trust
from attestation.tdx import quote, tcb
from attestation.tdx.verifier import TdxVerifier, bundled_root
from tests.tdx_helpers import (
    GO_V4_AT,
    GO_V5_AT,
    NOW,
    QUOTES,
    TRUSTEE_AT,
    check,
    failed,
    go_v4_collateral,
    go_v5_collateral,
    quote_bytes,
    tdx,
    trustee_collateral,
    utc,
    vectors_dir,
    verify,
)

INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
QUOTE_CHECKS = {"format", "qe_vendor_id", "pck_chain", "pck_revocation", "pck_extensions"}
QUOTE_CHECKS |= {"qe_report_signature", "qe_report_data", "quote_signature"}


def test_bundled_root_is_the_intel_sgx_root_ca():
    der = bundled_root().public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == INTEL_ROOT_SHA256
    assert der == tdx("intel", "TrustedRootCA.der")


@pytest.mark.parametrize("name", sorted(QUOTES))
@pytest.mark.parametrize("at", [NOW, utc("2026-02-03")])
def test_every_quote_verifies_without_collateral(name, at):
    result = verify(quote_bytes(name), at)
    assert result.ok, result.reason()
    assert {c.name for c in result.checks} == QUOTE_CHECKS
    assert result.tcb_status is None and result.claims["tcb_evaluated"] is False
    assert result.report_data == quote.parse(quote_bytes(name)).body.report_data


def test_go_v4_without_collateral_at_pinned_time_and_claims():
    result = verify(quote_bytes("go_v4"), GO_V4_AT)
    assert result.ok
    c = result.claims
    assert c["mrtd"].startswith("6363b8043668a3ad953278e10389574d") and c["rtmr3"] == "00" * 48
    assert c["trailing_bytes"] == 39 and c["quote_version"] == 4 and c["fmspc"] == "50806f000000"
    assert c["td_attributes"] == "0000004000000000" and c["debug"] is False


def test_go_v4_expired_pck_leaf_rejected_in_2053():
    result = verify(quote_bytes("go_v4"), utc("2053-07-01"))
    assert failed(result) >= {"pck_chain"}
    assert "expired" in next(c.detail for c in result.checks if c.name == "pck_chain")


def test_go_v4_full_collateral_at_pinned_time():
    """Collateral verifies (signatures, old TCB Signing chain, CRLs, freshness); Intel's TCB rules
    find no level for this platform (PCK SGX component 1 is 3 < 5, TEE_TCB_SVN[2] is 4 < 5)."""
    result = verify(quote_bytes("go_v4"), GO_V4_AT, go_v4_collateral())
    for name in (
        "pck_chain",
        "pck_revocation",
        "tcb_info",
        "tcb_info_fresh",
        "qe_identity",
        "qe_identity_fresh",
    ):
        assert check(result, name), name
    assert "PCK CA and Root CA CRLs" in next(c.detail for c in result.checks if c.name == "pck_revocation")
    assert failed(result) == {"tcb_evaluation", "tcb_status"}
    assert result.tcb_status == tcb.NOT_SUPPORTED


def test_go_v4_collateral_stale_in_2053_and_now():
    for at in (NOW, utc("2053-07-01")):
        result = verify(quote_bytes("go_v4"), at, go_v4_collateral(with_crls=False))
        assert not result.ok
        assert not check(result, "tcb_info")  # the old TCB Signing certificate expired 2025-05-21
    result = verify(quote_bytes("go_v4"), NOW, go_v4_collateral())
    assert "CRL has expired" in next(c.detail for c in result.checks if c.name == "pck_chain")


def test_trustee_4_up_to_date_with_go_collateral():
    """Same FMSPC as the go-tdx-guest collateral, and its SVNs meet the newest level."""
    result = verify(quote_bytes("trustee_4"), GO_V4_AT, go_v4_collateral())
    assert result.ok, result.reason()
    assert result.tcb_status == "UpToDate" and result.advisories == ()
    assert result.claims["tdx_module_id"] == "tdxModule" and result.claims["debug"] is True


def test_trustee_6_with_renewed_chain_is_out_of_date():
    result = verify(quote_bytes("trustee_6"), TRUSTEE_AT, trustee_collateral())
    assert failed(result) == {"tcb_status"}
    assert result.tcb_status == "OutOfDate"
    assert result.claims["platform_tcb_status"] == "OutOfDate"
    assert result.claims["tdx_module_id"] == "TDX_03" and result.claims["tdx_module_tcb_status"] == "UpToDate"
    accepted = verify(
        quote_bytes("trustee_6"), TRUSTEE_AT, trustee_collateral(), accept_tcb={"UpToDate", "OutOfDate"}
    )
    assert accepted.ok and accepted.tcb_status == "OutOfDate"


def test_trustee_6_collateral_stale_now():
    result = verify(quote_bytes("trustee_6"), NOW, trustee_collateral(), accept_tcb={"OutOfDate"})
    assert failed(result) == {"tcb_info_fresh", "qe_identity_fresh"}


def test_trustee_collateral_with_expired_old_signing_chain_rejected():
    result = verify(
        quote_bytes("trustee_6"), TRUSTEE_AT, trustee_collateral(chain="old"), accept_tcb={"OutOfDate"}
    )
    assert {"tcb_info", "qe_identity"} <= failed(result)
    assert "expired" in next(c.detail for c in result.checks if c.name == "tcb_info")


def test_go_v5_tcb_info_up_to_date_but_only_stale_qe_identity_exists():
    result = verify(quote_bytes("go_v5"), GO_V5_AT, go_v5_collateral())
    assert failed(result) == {"qe_identity_fresh"}
    assert result.tcb_status == "UpToDate"
    assert result.claims["tdx_module_id"] == "TDX_01"


def test_wrong_fmspc_is_not_evaluated():
    result = verify(quote_bytes("trustee_4"), TRUSTEE_AT, trustee_collateral())
    assert "tcb_evaluation" in failed(result)
    assert "FMSPC" in next(c.detail for c in result.checks if c.name == "tcb_evaluation")


def test_collateral_signature_covers_exact_bytes():
    col = trustee_collateral()
    raw = col["tcb_info.json"]
    reordered = b'{"signature":' + raw[raw.index(b'"signature":') + 12 : -2] + b',"tcbInfo":'
    reordered += raw[len(b'{"tcbInfo":') : raw.index(b',"signature"')] + b"}"
    ok = verify(
        quote_bytes("trustee_6"), TRUSTEE_AT, {**col, "tcb_info.json": reordered}, accept_tcb={"OutOfDate"}
    )
    assert ok.ok, ok.reason()
    spaced = raw.replace(b'"version":3', b'"version": 3', 1)
    bad = verify(
        quote_bytes("trustee_6"), TRUSTEE_AT, {**col, "tcb_info.json": spaced}, accept_tcb={"OutOfDate"}
    )
    assert "signature does not verify" in next(c.detail for c in bad.checks if c.name == "tcb_info")
    lowered = raw.replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"OutOfDate"', 1)
    assert not check(
        verify(quote_bytes("trustee_6"), TRUSTEE_AT, {**col, "tcb_info.json": lowered}), "tcb_info"
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: raw + b"x", "not valid JSON"),
        (lambda raw: raw.replace(b'{"tcbInfo"', b'{"tcbInfo":{},"tcbInfo"', 1), "duplicate"),
        (lambda raw: raw.replace(b'"id":"TDX"', b'"id":"SGX"', 1), "expected id 'TDX'"),
        (lambda raw: b"[]", "expected a JSON object"),
    ],
)
def test_malformed_tcb_info_fails_its_check(mutate, message):
    col = trustee_collateral()
    col["tcb_info.json"] = mutate(col["tcb_info.json"])
    result = verify(quote_bytes("trustee_6"), TRUSTEE_AT, col)
    detail = next(c.detail for c in result.checks if c.name == "tcb_info")
    assert message in detail and not result.ok


def test_incomplete_collateral_and_required_options():
    col = trustee_collateral()
    del col["qe_identity.json"]
    result = verify(quote_bytes("trustee_6"), TRUSTEE_AT, col)
    assert failed(result) == {"collateral"}
    assert failed(verify(quote_bytes("trustee_6"), TRUSTEE_AT, require_collateral=True)) == {"collateral"}
    assert failed(verify(quote_bytes("trustee_6"), TRUSTEE_AT, require_crl=True)) == {"pck_revocation"}
    root_only = {**go_v4_collateral(), "pck_crl.der": None}
    del root_only["pck_crl.der"]
    assert "pck_revocation" in failed(verify(quote_bytes("trustee_4"), GO_V4_AT, root_only))


def test_report_data_binding():
    data = quote_bytes("trustee_6")
    rd = quote.parse(data).body.report_data
    assert check(verify(data, NOW, expected=rd), "report_data")
    other = bytes([rd[0] ^ 1]) + rd[1:]
    result = verify(data, NOW, expected=other)
    assert failed(result) == {"report_data"}


def test_other_root_rejects_the_pck_chain():
    ark = (vectors_dir() / "snp" / "go-sev-guest" / "ask_ark_milan.pem").read_bytes()
    trust = Trust(roots={"intel_root": ark})
    result = TdxVerifier().verify(
        Evidence("tdx", quote_bytes("trustee_6")), expected_report_data=None, trust=trust, at=NOW
    )
    assert "pck_chain" in failed(result)
    own = Trust(roots={"intel_root": tdx("intel", "TrustedRootCA.der")})
    assert (
        TdxVerifier()
        .verify(Evidence("tdx", quote_bytes("trustee_6")), expected_report_data=None, trust=own, at=NOW)
        .ok
    )


def test_wrong_evidence_type_and_malformed_quote_fail_format():
    wrong = TdxVerifier().verify(
        Evidence("sev-snp", quote_bytes("trustee_6")), expected_report_data=None, trust=Trust(), at=NOW
    )
    assert failed(wrong) == {"format"}
    short = verify(quote_bytes("trustee_6")[:700], NOW)
    assert [c.name for c in short.checks] == ["format"] and "\n" not in short.reason()


def test_non_canonical_pem_chain_rejected():
    data = quote_bytes("trustee_4")
    q = quote.parse(data)
    start = data.index(q.pck_chain_pem)
    line_end = data.index(b"\n", start + 40)
    tampered = bytearray(data)
    tampered[line_end] = ord(" ")  # same length, PEM still decodable by lenient readers
    result = verify(bytes(tampered), NOW)
    assert "pck_chain" in failed(result)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize(
    ("name", "region", "stride"), [("trustee_6", "all", 1), ("trustee_5", "quote_body", 3)]
)
def test_every_bit_flip_in_the_signed_parts_is_rejected(name, region, stride):
    """v4, exhaustively: every bit before the PEM chain (header, body, sig_data_len, quote
    signature, attestation key, certification data headers, QE report, its signature, auth data).
    v5: every bit of every 3rd byte of header, body descriptor, TD15 body and sig_data_len."""
    data = quote_bytes(name)
    q = quote.parse(data)
    end = data.index(q.pck_chain_pem) if region == "all" else len(q.signed) + 4
    for pos in range(0, end, stride):
        for bit in range(8):
            result = verify(_flip(data, pos * 8 + bit), NOW)
            assert not result.ok, f"{name}: flipping bit {bit} of byte {pos} was accepted"


def test_bit_flips_in_the_pck_chain_are_rejected():
    """Every bit of every 7th byte of the PEM chain (~4300 flips), and of its NUL terminator."""
    data = quote_bytes("trustee_6")
    q = quote.parse(data)
    start = data.index(q.pck_chain_pem)
    positions = [*range(start, start + len(q.pck_chain_pem), 7), start + len(q.pck_chain_pem) - 1]
    for pos in positions:
        for bit in range(8):
            assert not verify(_flip(data, pos * 8 + bit), NOW).ok, f"flip at byte {pos} bit {bit} accepted"


def test_bit_flips_in_trailing_bytes_are_tolerated():
    data = quote_bytes("trustee_6")
    q = quote.parse(data)
    for pos in range(q.length, len(data), 7):
        result = verify(_flip(data, pos * 8), NOW)
        assert result.ok and result.claims["trailing_bytes"] == 70
