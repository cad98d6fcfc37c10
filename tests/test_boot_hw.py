"""The loader's whole boot flow with tee = "tdx" and tee = "sev-snp", against fake kernels.

The fakes serve REAL vendor-signed evidence (nothing here can sign fresh evidence), so the
report's evidence verifies in every respect except the fresh binding to this run's key: the
test checks exactly that, and that the TDX runtime register replays from the report's events.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attestation import rtmr
from attestation.sevsnp import certtable
from attestation.sevsnp.attester import SnpAttester
from attestation.sevsnp.products import Product
from attestation.sevsnp.roots import bundled_chain
from attestation.tdx.attester import TdxAttester
from loader.boot.config import load_config
from loader.boot.sequence import boot
from loader.report.document import parse_report
from loader.report.verify import verify_report
from tests.snp_helpers import FakeSevGuest, der, fake_device_tree, snp
from tests.tdx_helpers import ROOT, FakeTdxKernel, quote_bytes


def _use_tee(demo_dir: Path, tee: str, collateral: str = "") -> Path:
    """Switch the demo job to `tee`; `collateral` is the [collateral] table's body (default: an
    empty offline directory, so nothing is fetched and the TCB cannot be judged)."""
    cfg = demo_dir / "loader.toml"
    if not collateral:
        (demo_dir / "no-collateral").mkdir(exist_ok=True)
        collateral = 'offline_dir = "no-collateral"'
    text = cfg.read_text().replace('tee = "mock"', f'tee = "{tee}"')
    cfg.write_text(text + f"\n[collateral]\n{collateral}\n")
    policy = demo_dir / "approved.json"
    policy.write_text(policy.read_text().replace('"tee": [\n    "mock"\n  ]', f'"tee": ["{tee}"]'))
    assert f'"{tee}"' in policy.read_text()
    return cfg


def _failed_checks(report: bytes) -> list[str]:
    result = verify_report(report, allow_mock=False)
    return [f"{name}: {detail}" for name, passed, detail in result.checks if not passed]


def test_tdx_boot_flow_extends_rtmr3_and_reports_replayable_events(demo_dir: Path) -> None:
    kernel = FakeTdxKernel(quote_bytes("trustee_6"))
    outcome = boot(load_config(_use_tee(demo_dir, "tdx")), attester=TdxAttester(root=ROOT, ops=kernel))
    # no collateral: the TCB cannot be judged, so the job is refused (before the workload)
    assert outcome.exit_code == 3 and len(outcome.reasons) == 1, outcome.reasons
    assert "no collateral" in outcome.reasons[0]
    payload = parse_report(outcome.report).payload
    assert [e["type"] for e in payload["evidence"]] == ["tdx"]
    values = [e["value"] for e in payload["events"]]
    assert len(values) == 5 and kernel.rtmrs[3] == rtmr.replay(values)
    assert "workload-start" not in [e["event"] for e in payload["events"]]  # the engine never started
    assert payload["rtmr3"] == {"initial": bytes(48)}
    assert kernel.inblobs and len(kernel.inblobs[0]) == 64
    failed = _failed_checks(outcome.report)
    assert len(failed) == 2 and failed[0].startswith("evidence[0]: tdx: report_data"), failed
    assert failed[1].startswith("tcb[0]: ") and "no collateral" in failed[1]


@pytest.mark.parametrize("interface", ["configfs-tsm", "sev-guest"])
def test_snp_boot_flow_against_fake_device(
    demo_dir: Path, tmp_path: Path, interface: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fake_tsm import FakeTsmKernel

    report, vcek = snp("virtee-sev/report_milan.bin"), snp("virtee-sev/vcek_milan.der")
    ask, ark = bundled_chain(Product.MILAN, "vcek")
    table = certtable.build(
        [(certtable.VCEK_GUID, vcek), (certtable.ASK_GUID, der(ask)), (certtable.ARK_GUID, der(ark))],
        pad_to=3 * 4096,
    )
    root = fake_device_tree(tmp_path / "root")
    if interface == "configfs-tsm":
        ops = FakeTsmKernel(root=root, provider="sev_guest", quote=lambda _i, _p: (report, table))
        attester = SnpAttester(root=root, ops=ops, interface=interface)
    else:
        attester = SnpAttester(root=root, ioctl=FakeSevGuest(report, table), interface=interface)
    cfg = load_config(_use_tee(demo_dir, "sev-snp"))
    outcome = boot(cfg, attester=attester)
    assert outcome.exit_code == 3 and "no collateral" in outcome.reasons[0], outcome.reasons
    payload = parse_report(outcome.report).payload
    assert [e["type"] for e in payload["evidence"]] == ["sev-snp"]
    assert payload["evidence"][0]["data"] == report
    assert payload["rtmr3"] is None  # no runtime register: containment is the only defence
    assert payload["containment"] is None  # no engine started
    failed = _failed_checks(outcome.report)
    assert len(failed) == 2 and failed[0].startswith("evidence[0]: sev-snp: report_data"), failed
    # With the (stale) collateral step skipped the engine runs, and the report says what SEV-SNP
    # cannot give: a runtime register to mark the workload's start.
    import loader.boot.sequence

    monkeypatch.setattr(loader.boot.sequence, "_collateral", lambda state: None)
    ran = parse_report(boot(cfg, attester=attester).report).payload
    assert (
        ran["containment"]["boundary"] == "SEV-SNP has no runtime register: containment is the only defence"
    )


def test_report_verify_evaluates_tdx_tcb_with_collateral(demo_dir: Path, tmp_path: Path) -> None:
    """`report verify --collateral DIR`: the TDX TCB is evaluated (this platform is OutOfDate
    under trustee's 2025 TCB Info, so the report is refused for that too)."""
    from tests.conftest import cli
    from tests.tdx_helpers import trustee_collateral

    kernel = FakeTdxKernel(quote_bytes("trustee_6"))
    outcome = boot(load_config(_use_tee(demo_dir, "tdx")), attester=TdxAttester(root=ROOT, ops=kernel))
    report = tmp_path / "tdx.cbor"
    report.write_bytes(outcome.report)
    collateral = tmp_path / "collateral"
    collateral.mkdir()
    for name, data in trustee_collateral().items():
        (collateral / name).write_bytes(data)
    import json

    res = cli(
        "report", "verify", report, "--collateral", collateral, "--at", "2025-11-01T00:00:00Z", "--json"
    )
    evidence = json.loads(res.stdout)["evidence"][0]
    assert evidence["tcb_status"] == "OutOfDate"
    assert [c["name"] for c in evidence["checks"] if not c["passed"]] == ["report_data", "tcb_status"]
    stale = cli("report", "verify", report, "--collateral", collateral, "--json")
    failed = [c["name"] for c in json.loads(stale.stdout)["evidence"][0]["checks"] if not c["passed"]]
    assert "tcb_info_fresh" in failed and stale.returncode == 1
