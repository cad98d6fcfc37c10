"""`python -m attestation.tdx.cli` (what `trusted-loader evidence verify --type tdx` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attestation.tdx import cli
from tests.tdx_helpers import REPO, go_v4_collateral, quote_bytes, trustee_collateral, vectors_dir


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "attestation.tdx.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def _dir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    d = tmp_path / "collateral"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def _quote(tmp_path: Path, data: bytes) -> str:
    p = tmp_path / "quote.bin"
    p.write_bytes(data)
    return str(p)


def test_subprocess_full_collateral_out_of_date_json(tmp_path):
    q = _quote(tmp_path, quote_bytes("trustee_6"))
    col = str(_dir(tmp_path, trustee_collateral()))
    rejected = _run(q, "--collateral", col, "--at", "2025-11-01T00:00:00Z", "--json")
    assert rejected.returncode == 1, rejected.stderr
    out = json.loads(rejected.stdout)
    assert out["tcb_status"] == "OutOfDate" and out["ok"] is False
    assert {c["name"]: c["passed"] for c in out["checks"]}["tcb_status"] is False
    assert out["claims"]["mrtd"].startswith("21e8dead92d6c69d") and out["claims"]["trailing_bytes"] == 70
    assert set(out["claims"]) >= {
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "report_data",
        "mrconfigid",
        "tee_tcb_svn",
    }
    accepted = _run(
        q,
        "--collateral",
        col,
        "--at",
        "2025-11-01",
        "--accept-tcb",
        "UpToDate,OutOfDate",
        "--json",
        "--any-image",
    )
    assert accepted.returncode == 0 and json.loads(accepted.stdout)["ok"] is True
    stale = _run(q, "--collateral", col, "--accept-tcb", "OutOfDate", "--json")
    assert stale.returncode == 1
    assert "stale" in " ".join(c["detail"] for c in json.loads(stale.stdout)["checks"] if not c["passed"])


def test_no_collateral_says_tcb_not_evaluated(tmp_path, capsys):
    q = _quote(tmp_path, quote_bytes("go_v4"))
    assert cli.main([q, "--at", "2023-07-01", "--json", "--any-image"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["tcb_status"] is None and out["claims"]["tcb_evaluated"] is False
    failed = {c["name"]: c["detail"] for c in out["checks"] if not c["passed"]}
    assert list(failed) == ["appraisal_tcb"] and "TCB not evaluated" in failed["appraisal_tcb"]
    assert out["appraisal"]["any_image"] is True
    assert cli.main([q, "--at", "2023-07-01", "--require-collateral"]) == 1


def test_up_to_date_with_crls_but_debug_refused_unless_allowed(tmp_path, capsys):
    """trustee's tdx_quote_4.dat is a DEBUG TD: genuine, UpToDate, and refused by default."""
    q = _quote(tmp_path, quote_bytes("trustee_4"))
    col = str(_dir(tmp_path, go_v4_collateral()))
    base = [q, "--collateral", col, "--at", "2023-07-01", "--require-crl", "--any-image"]
    assert cli.main(base) == 1
    assert "appraisal_debug: a debug TEE" in capsys.readouterr().out
    assert cli.main([*base, "--allow-debug"]) == 0
    err = capsys.readouterr().out
    assert "verified (tdx, TCB UpToDate; ANY IMAGE ACCEPTED (--any-image))" in err
    assert "DEBUG TEE accepted (--allow-debug)" in err


def test_reference_values_pin_the_image(tmp_path, capsys):
    from attestation.reference import FORMAT

    q = _quote(tmp_path, quote_bytes("trustee_4"))
    col = str(_dir(tmp_path, go_v4_collateral()))
    assert (
        cli.main([q, "--collateral", col, "--at", "2023-07-01", "--json", "--any-image", "--allow-debug"])
        == 0
    )
    claims = json.loads(capsys.readouterr().out)["claims"]
    names = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrseam", "td_attributes", "xfam")
    entry = {"name": "fleet-a", "type": "tdx", "values": {n: [claims[n]] for n in names}}
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"format": FORMAT, "platforms": [entry]}))
    base = [q, "--collateral", col, "--at", "2023-07-01", "--allow-debug", "--reference", str(ref)]
    assert cli.main(base) == 0
    assert "matches platform 'fleet-a'" in capsys.readouterr().out
    entry["values"]["mrtd"] = ["00" * 48, "11" * 48]  # an allowed set without this image
    ref.write_text(json.dumps({"format": FORMAT, "platforms": [entry]}))
    assert cli.main(base) == 1
    assert "matches no tdx platform: 'fleet-a': mrtd" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda q: q[:1000], "sig_data needs"),
        (lambda q: q[:40], "header.user_data needs"),
        (lambda q: q + bytes(70_000), "larger than the 65536 bytes allowed"),
    ],
)
def test_truncated_and_oversized_quotes_exit_1_with_one_line(tmp_path, data, message):
    res = _run(_quote(tmp_path, data(quote_bytes("trustee_4"))))
    assert res.returncode == 1
    last = res.stdout.strip().splitlines()[-1]  # the result goes to stdout
    assert message in last and "rejected" in last and "Traceback" not in res.stderr


def test_usage_and_io_errors_exit_2(tmp_path, capsys):
    q = _quote(tmp_path, quote_bytes("trustee_6"))
    assert cli.main([str(tmp_path / "missing.bin")]) == 2
    assert cli.main([q, "--collateral", str(tmp_path)]) == 2  # no tcb_info.json there
    assert cli.main([q, "--accept-tcb", "Fine"]) == 2
    assert cli.main([q, "--report-data", "abcd"]) == 2
    assert "--accept-tcb: unknown status Fine" in capsys.readouterr().err


def test_root_override_and_report_data(tmp_path, capsys):
    q = _quote(tmp_path, quote_bytes("trustee_6"))
    ark = str(vectors_dir() / "snp" / "go-sev-guest" / "ask_ark_milan.pem")
    assert cli.main([q, "--root", ark]) == 1
    intel = str(vectors_dir() / "tdx" / "intel" / "TrustedRootCA.der")
    capsys.readouterr()
    assert cli.main([q, "--root", intel, "--json", "--any-image"]) == 1  # genuine; TCB not evaluated
    assert _failed(capsys) == ["appraisal_tcb"]
    rd = (
        "26cae1c77185617fb6a03fc29bf1f924596e52352b9b7594940b576ae126cd4a570cc3202a900c5d19a6eb0a95b32cfd"
        + "00" * 16
    )
    assert cli.main([q, "--report-data", rd, "--any-image", "--json"]) == 1
    assert _failed(capsys) == ["appraisal_tcb"]
    assert cli.main([q, "--report-data", "00" * 64, "--json"]) == 1
    assert _failed(capsys) == ["report_data"]


def _failed(capsys) -> list[str]:
    return [c["name"] for c in json.loads(capsys.readouterr().out)["checks"] if not c["passed"]]
