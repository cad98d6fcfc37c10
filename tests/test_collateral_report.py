"""Reports that carry their collateral: fetched at boot (fake configfs-tsm, real quote, a PCCS on
loopback), judged by `report verify` offline from the report alone, and refused without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attestation.tdx.attester import TdxAttester
from loader.boot.config import load_config
from loader.boot.keys import EphemeralKey
from loader.boot.sequence import boot
from loader.report.document import parse_report, sign_report
from tests.collateral_server import Served, go_pcs, serving
from tests.conftest import cli
from tests.review_helpers import keep_boot_keys
from tests.tdx_helpers import ROOT, FakeTdxKernel, quote_bytes


def _tdx_job(demo_dir: Path, collateral: str) -> Path:
    cfg = demo_dir / "loader.toml"
    text = cfg.read_text().replace('tee = "mock"', 'tee = "tdx"')
    cfg.write_text(text + f"\n[collateral]\n{collateral}\n")
    policy = demo_dir / "approved.json"
    policy.write_text(policy.read_text().replace('"tee": [\n    "mock"\n  ]', '"tee": ["tdx"]'))
    return cfg


@pytest.fixture
def kept_keys(monkeypatch: pytest.MonkeyPatch) -> list[EphemeralKey]:
    """The boot's ephemeral keys, kept so that a test can re-sign an altered report."""
    return keep_boot_keys(monkeypatch)


@pytest.fixture
def tdx_report(demo_dir: Path, tmp_path: Path, kept_keys: list[EphemeralKey]) -> tuple[Path, bytes]:
    """A TDX job on the fake configfs-tsm with trustee's real quote 4, collateral from a PCCS."""
    served = Served(go_pcs())
    with serving(served) as url:
        cfg = load_config(_tdx_job(demo_dir, f'pccs_url = "{url}"\nattempts = 1'))
        outcome = boot(cfg, attester=TdxAttester(root=ROOT, ops=FakeTdxKernel(quote_bytes("trustee_4"))))
    assert len(served.requests) == 4
    # 2023 collateral at today's date: stale, so the job is refused before the workload
    assert outcome.exit_code == 3 and outcome.workload is None
    assert len(outcome.reasons) == 1 and outcome.reasons[0].startswith("collateral: evidence[0] tdx:")
    assert "CRL has expired" in outcome.reasons[0]
    path = tmp_path / "tdx.cbor"
    path.write_bytes(outcome.report)
    return path, outcome.report


def _verify(report: Path, *args: str) -> tuple[int, dict]:
    res = cli("report", "verify", report, *args, "--json")
    return res.returncode, json.loads(res.stdout)


def _check(out: dict, name: str) -> dict:
    return next(c for c in out["checks"] if c["name"] == name)


def test_the_report_carries_its_collateral(tdx_report) -> None:
    _, raw = tdx_report
    record = parse_report(raw).payload["collateral"]
    assert record["needed"] is True and record["errors"] == []
    (only,) = record["sets"]
    assert only["evidence"] == 0 and only["source"].startswith("http://127.0.0.1:")
    assert set(only["files"]) == {
        "tcb_info.json",
        "tcb_info_issuer_chain.pem",
        "qe_identity.json",
        "qe_identity_issuer_chain.pem",
        "pck_crl.der",
        "pck_crl_issuer_chain.pem",
        "root_ca_crl.der",
    }


def test_report_verify_judges_the_tcb_offline_from_the_report_alone(tdx_report) -> None:
    """No server and no --collateral: the status comes from the report's own collateral, at the
    report's time (stale today) or at a given time (UpToDate at 2023-07-01)."""
    path, _ = tdx_report
    code, out = _verify(path)
    assert code == 1
    tcb = _check(out, "tcb[0]")
    assert not tcb["passed"] and "from the report's collateral" in tcb["detail"]
    assert "CRL has expired" in tcb["detail"]
    code, out = _verify(path, "--at", "2023-07-01T00:00:00Z")
    assert _check(out, "tcb[0]")["passed"], _check(out, "tcb[0]")
    (shown,) = out["tcb"]
    assert shown["collateral"] == "report" and shown["tcb_status"] == "UpToDate" and shown["ok"]
    # still refused: the real quote is not bound to this run's key (fake kernel, real quote)
    assert code == 1 and _check(out, "evidence[0]")["detail"].startswith("tdx: report_data")


def test_fresher_collateral_is_shown_beside_the_reports(tdx_report, tmp_path: Path) -> None:
    path, raw = tdx_report
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name, data in parse_report(raw).payload["collateral"]["sets"][0]["files"].items():
        if name not in ("root_ca_crl.der", "pck_crl.der", "pck_crl_issuer_chain.pem"):
            (fresh / name).write_bytes(data)
    _, out = _verify(path, "--collateral", str(fresh), "--at", "2023-07-01T00:00:00Z")
    assert [t["collateral"] for t in out["tcb"]] == ["report", "fresh"]
    assert _check(out, "tcb[0]")["passed"]
    # the fresher set has no CRLs: it cannot vouch for the TCB on its own
    assert (
        not _check(out, "tcb[0]:fresh")["passed"]
        and "pck_revocation" in _check(out, "tcb[0]:fresh")["detail"]
    )
    with serving(Served(go_pcs())) as url:
        _, out = _verify(path, "--online", "--pccs-url", url, "--at", "2023-07-01T00:00:00Z")
    fresh_tcb = [t for t in out["tcb"] if t["collateral"] == "fresh"]
    assert fresh_tcb and fresh_tcb[0]["tcb_status"] == "UpToDate" and _check(out, "tcb[0]:fresh")["passed"]


def test_a_report_stripped_of_its_collateral_is_refused(tdx_report, kept_keys) -> None:
    """The attacker (holding the key, in this test) re-signs the report without its collateral:
    the evidence still verifies, but hardware evidence without collateral is not verified."""
    path, raw = tdx_report
    report = parse_report(raw)
    payload = dict(report.payload)
    payload["collateral"] = {"needed": True, "sets": [], "errors": []}
    key = kept_keys[-1]
    stripped = sign_report(payload, x5chain=report.envelope.x5chain, sign=key.sign_raw)
    path.write_bytes(stripped)
    code, out = _verify(path, "--at", "2023-07-01T00:00:00Z")
    assert code == 1
    tcb = _check(out, "tcb[0]")
    assert not tcb["passed"] and "no collateral" in tcb["detail"]
    payload["collateral"] = {"needed": False, "sets": [], "errors": []}
    path.write_bytes(sign_report(payload, x5chain=report.envelope.x5chain, sign=key.sign_raw))
    assert not _check(_verify(path, "--at", "2023-07-01T00:00:00Z")[1], "tcb[0]")["passed"]


def test_the_mock_flow_needs_no_collateral(demo_report) -> None:
    _, raw = demo_report
    assert parse_report(raw).payload["collateral"] == {"needed": False, "sets": [], "errors": []}


def test_mock_report_verifies_and_says_none_is_needed(demo_report, tmp_path: Path) -> None:
    path = tmp_path / "mock.cbor"
    path.write_bytes(demo_report[1])
    code, out = _verify(path, "--allow-mock", "--reference", str(demo_report[0] / "reference.json"))
    assert code == 0, out
    assert "none needed for mock evidence" in _check(out, "tcb[0]")["detail"]


def test_collateral_swapped_for_another_platforms_is_refused(tdx_report, kept_keys) -> None:
    """An attacker re-signs the report with trustee's 2025 TCB Info (FMSPC 00a06d080000) in place
    of the collateral fetched for this quote (FMSPC 50806f000000): no TCB status applies."""
    from tests.tdx_helpers import tdx

    path, raw = tdx_report
    report = parse_report(raw)
    payload = dict(report.payload)
    files = dict(payload["collateral"]["sets"][0]["files"])
    files["tcb_info.json"] = tdx("trustee", "tcbInfo.json")
    files["tcb_info_issuer_chain.pem"] = tdx("go-tdx-guest", "tcbinfo_issuer_chain.pem")  # same key
    payload["collateral"] = {
        **payload["collateral"],
        "sets": [{**payload["collateral"]["sets"][0], "files": files}],
    }
    path.write_bytes(sign_report(payload, x5chain=report.envelope.x5chain, sign=kept_keys[-1].sign_raw))
    code, out = _verify(path, "--at", "2023-07-01T00:00:00Z")
    tcb = _check(out, "tcb[0]")
    assert code == 1 and not tcb["passed"]
    assert "TCB NotSupported: tcb_info_fresh: issued 2025-10-27" in tcb["detail"]
    assert "also failed: tcb_evaluation, tcb_status" in tcb["detail"]
    assert out["tcb"][0]["tcb_status"] == "NotSupported"


def test_snp_boot_fetches_vcek_chain_and_crl_from_kds(demo_dir: Path, tmp_path: Path) -> None:
    """SEV-SNP through configfs-tsm with virtee's real Milan report: the KDS on loopback serves
    the VCEK for the reported TCB, the chain, and a SYNTHETIC CRL (no AMD CRL in the vectors)
    that does not verify under the real ARK: the job is refused naming the CRL, and the report
    carries all three."""
    from attestation.sevsnp import certtable
    from attestation.sevsnp import report as snp_report
    from attestation.sevsnp.attester import SnpAttester
    from tests.collateral_helpers import synthetic_crl
    from tests.collateral_server import Route, kds_chain_route, kds_vcek_route
    from tests.fake_tsm import FakeTsmKernel
    from tests.snp_helpers import fake_device_tree, snp

    raw = snp("virtee-sev/report_milan.bin")
    spls = {"blSPL": 3, "teeSPL": 0, "snpSPL": 8, "ucodeSPL": 115}
    routes = {
        **kds_vcek_route("Milan", snp_report.parse(raw).chip_id, spls, snp("virtee-sev/vcek_milan.der")),
        **kds_chain_route("Milan"),
        "/vcek/v1/Milan/crl": Route(synthetic_crl("ARK-Milan")),
    }
    root = fake_device_tree(tmp_path / "root")
    table = certtable.build([], pad_to=4096)
    ops = FakeTsmKernel(root=root, provider="sev_guest", quote=lambda _i, _p: (raw, table))
    cfg = demo_dir / "loader.toml"
    cfg.write_text(cfg.read_text().replace('tee = "mock"', 'tee = "sev-snp"'))
    policy = demo_dir / "approved.json"
    policy.write_text(policy.read_text().replace('"tee": [\n    "mock"\n  ]', '"tee": ["sev-snp"]'))
    with serving(Served(routes)) as url:
        cfg.write_text(
            cfg.read_text() + f'\n[collateral]\nkds_url = "{url}"\nsnp_product = "milan"\nattempts = 1\n'
        )
        outcome = boot(load_config(cfg), attester=SnpAttester(root=root, ops=ops, interface="configfs-tsm"))
    assert outcome.exit_code == 3
    (reason,) = outcome.reasons
    assert reason.startswith("collateral: evidence[0] sev-snp: crl: SEV-Milan against the CRL of ARK-Milan")
    (only,) = parse_report(outcome.report).payload["collateral"]["sets"]
    assert set(only["files"]) == {"vcek", "chain", "crl"} and only["files"]["vcek"] == snp(
        "virtee-sev/vcek_milan.der"
    )


def test_snp_collateral_without_the_arks_crl_is_not_enough() -> None:
    import datetime as dt

    from attestation.evidence import Evidence
    from loader.report.collateral import judge_one
    from tests.snp_helpers import snp

    ev = Evidence("sev-snp", snp("virtee-sev/report_milan.bin"))
    at = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    j = judge_one(0, ev, {"vcek": snp("virtee-sev/vcek_milan.der")}, at=at)
    assert not j.ok and j.detail == "crl: no CRL of the ARK in the collateral"
    assert {name for name, passed, _ in j.checks if passed} >= {"certificate", "chain", "hwid", "tcb"}
    other = judge_one(0, ev, {"vcek": snp("go-sev-guest/vcek.testcer")}, at=at)
    assert not other.ok and other.detail.startswith("report_signature:") and "hwid" in other.detail
