"""Intel's TDX TCB evaluation rules on the real collateral, with one field changed at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from attestation.errors import CollateralError
from attestation.tdx import collateral, pck, quote, tcb
from certs.chain import load_certificates
from tests.tdx_helpers import quote_bytes, tdx


def _inputs(name: str):
    q = quote.parse(quote_bytes(name))
    leaf = load_certificates(q.pck_chain_pem.rstrip(b"\x00"))[0]
    return q, pck.parse_extensions(leaf)


def _trustee():
    return collateral.parse_tcb_info(tdx("trustee", "tcbInfo.json")), collateral.parse_qe_identity(
        tdx("trustee", "enclaveIdentity.json")
    )


def test_pck_extensions_of_real_leaves():
    _, ext = _inputs("trustee_6")
    assert (ext.fmspc.hex(), ext.pceid.hex(), ext.pcesvn) == ("00a06d080000", "0000", 11)
    assert ext.tcb_components == (2, 2, 7, 7, 4, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.cpusvn == bytes(ext.tcb_components)
    assert len(ext.ppid) == 16


def test_trustee_6_levels_and_module_identity():
    q, ext = _inputs("trustee_6")
    info, ident = _trustee()
    verdict = tcb.evaluate(info, ident, ext, q.body, q.qe_report)
    # PCESVN 11 < 13 skips level 0; level 1 (pcesvn 5) matches from TEE_TCB_SVN[2] on.
    assert (verdict.status, verdict.platform_status, verdict.qe_status) == (
        "OutOfDate",
        "OutOfDate",
        "UpToDate",
    )
    assert (verdict.module_id, verdict.module_status) == ("TDX_03", "UpToDate")
    better = replace(ext, pcesvn=13)
    assert tcb.evaluate(info, ident, better, q.body, q.qe_report).status == "UpToDate"


def test_module_identity_missing_or_mismatched():
    q, ext = _inputs("trustee_6")
    info, ident = _trustee()
    body = replace(q.body, tee_tcb_svn=bytes([5, 7]) + q.body.tee_tcb_svn[2:])
    with pytest.raises(tcb.TcbEvaluationError, match="no TDX module identity TDX_07"):
        tcb.evaluate(info, ident, ext, body, q.qe_report)
    body = replace(q.body, mrsignerseam=b"\x01" * 48)
    with pytest.raises(tcb.TcbEvaluationError, match="MRSIGNERSEAM"):
        tcb.evaluate(info, ident, ext, body, q.qe_report)
    body = replace(q.body, seam_attributes=b"\x00" * 7 + b"\x80")
    with pytest.raises(tcb.TcbEvaluationError, match="SEAM attributes"):
        tcb.evaluate(info, ident, ext, body, q.qe_report)


def test_module_isvsvn_selects_module_level():
    q, ext = _inputs("trustee_6")
    info, ident = _trustee()
    # TDX_01 has levels isvsvn 4 (UpToDate) and 2 (OutOfDate).
    body = replace(q.body, tee_tcb_svn=bytes([3, 1]) + q.body.tee_tcb_svn[2:])
    verdict = tcb.evaluate(info, ident, replace(ext, pcesvn=13), body, q.qe_report)
    assert (verdict.module_status, verdict.status) == ("OutOfDate", "OutOfDate")
    body = replace(q.body, tee_tcb_svn=bytes([1, 1]) + q.body.tee_tcb_svn[2:])
    with pytest.raises(tcb.TcbEvaluationError, match="below every TCB level"):
        tcb.evaluate(info, ident, ext, body, q.qe_report)


def test_tdx_1_0_module_compares_all_components():
    q, ext = _inputs("trustee_4")
    info = collateral.parse_tcb_info(tdx("go-tdx-guest", "sample_tcbInfo_response"))
    ident = collateral.parse_qe_identity(tdx("go-tdx-guest", "sample_qeIdentity_response"))
    assert tcb.evaluate(info, ident, ext, q.body, q.qe_report).status == "UpToDate"
    lower = replace(q.body, tee_tcb_svn=bytes([3, 0, 4]) + bytes(13))
    with pytest.raises(tcb.TcbEvaluationError, match="TCB not supported"):
        tcb.evaluate(info, ident, ext, lower, q.qe_report)
    version1 = replace(q.body, tee_tcb_svn=bytes([3, 1, 5]) + bytes(13))
    with pytest.raises(tcb.TcbEvaluationError, match="no TDX module identity TDX_01"):
        tcb.evaluate(info, ident, ext, version1, q.qe_report)


def test_advisories_of_matched_level():
    q, ext = _inputs("go_v5")
    info = collateral.parse_tcb_info(tdx("go-tdx-guest", "sample_tcbinfo_response_v5"))
    ident = collateral.parse_qe_identity(tdx("go-tdx-guest", "sample_qeIdentity_response"))
    assert tcb.evaluate(info, ident, ext, q.body, q.qe_report).advisories == ()
    older = replace(q.body, tee_tcb_svn=bytes([0x0B, 1, 2]) + bytes(13))
    verdict = tcb.evaluate(info, ident, ext, older, q.qe_report)
    assert verdict.status == "OutOfDate" and verdict.tcb_date.startswith("2024-03-13")
    assert verdict.advisories == (
        "INTEL-SA-01036",
        "INTEL-SA-01079",
        "INTEL-SA-01099",
        "INTEL-SA-01103",
        "INTEL-SA-01111",
    )
    old_module = replace(q.body, tee_tcb_svn=bytes([4, 1, 4]) + bytes(13))
    verdict = tcb.evaluate(info, ident, ext, old_module, q.qe_report)
    assert verdict.platform_status == "UpToDate" and verdict.module_status == "OutOfDate"
    assert verdict.status == "OutOfDate" and verdict.advisories == ("INTEL-SA-01036", "INTEL-SA-01099")


def test_qe_identity_matching():
    q, ext = _inputs("trustee_6")
    info, ident = _trustee()
    cases = [
        (replace(q.qe_report, mrsigner=bytes(32)), "MRSIGNER"),
        (replace(q.qe_report, isvprodid=1), "ISVPRODID"),
        (replace(q.qe_report, miscselect=1), "MISCSELECT"),
        (replace(q.qe_report, attributes=bytes(16)), "ATTRIBUTES"),
        (replace(q.qe_report, isvsvn=3), "below every TCB level"),
    ]
    for qe, message in cases:
        with pytest.raises(tcb.TcbEvaluationError, match=message):
            tcb.evaluate(info, ident, ext, q.body, qe)
    out_of_date_qe = replace(
        ident,
        levels=(
            collateral.IsvLevel(8, "UpToDate", "", ()),
            collateral.IsvLevel(0, "OutOfDate", "", ("SA-X",)),
        ),
    )
    verdict = tcb.evaluate(info, out_of_date_qe, replace(ext, pcesvn=13), q.body, q.qe_report)
    assert (verdict.platform_status, verdict.qe_status, verdict.status) == (
        "UpToDate",
        "OutOfDate",
        "OutOfDate",
    )
    assert verdict.advisories == ("SA-X",)


def test_fmspc_and_pceid_must_match():
    q, ext = _inputs("trustee_6")
    info, ident = _trustee()
    with pytest.raises(tcb.TcbEvaluationError, match="FMSPC"):
        tcb.evaluate(info, ident, replace(ext, fmspc=bytes(6)), q.body, q.qe_report)
    with pytest.raises(tcb.TcbEvaluationError, match="PCE-ID"):
        tcb.evaluate(info, ident, replace(ext, pceid=b"\x00\x01"), q.body, q.qe_report)


@pytest.mark.parametrize(
    ("platform", "other", "expected"),
    [
        ("UpToDate", "UpToDate", "UpToDate"),
        ("UpToDate", "OutOfDate", "OutOfDate"),
        ("SWHardeningNeeded", "OutOfDate", "OutOfDate"),
        ("ConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
        ("SWHardeningNeeded", "UpToDate", "SWHardeningNeeded"),
        ("UpToDate", "Revoked", "Revoked"),
        ("Revoked", "UpToDate", "Revoked"),
        ("OutOfDateConfigurationNeeded", "OutOfDate", "OutOfDateConfigurationNeeded"),
    ],
)
def test_status_convergence(platform, other, expected):
    assert tcb.converge(platform, other) == expected


def test_collateral_parsing_details():
    info, ident = _trustee()
    assert info.fmspc.hex() == "00a06d080000" and info.evaluation_data_number == 17
    assert [m.id for m in info.tdx_module_identities] == ["TDX_03", "TDX_01"]
    assert ident.isvprodid == 2 and ident.levels[0].isvsvn == 4
    raw = tdx("trustee", "tcbInfo.json")
    signed = collateral.split_signed(raw, "tcbInfo", "t")
    assert raw[signed.body_bytes.__len__() :] != raw and raw.index(signed.body_bytes) == len(b'{"tcbInfo":')
    with pytest.raises(CollateralError, match="unknown status"):
        collateral.parse_tcb_info(raw.replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"Great"', 1))
