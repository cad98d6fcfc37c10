"""`trusted-loader evidence verify --type sev-snp` as `python -m attestation.sevsnp.cli`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.sevsnp import report
from attestation.sevsnp.cli import main
from attestation.sevsnp.products import Product
from tests.snp_helpers import REPO, SyntheticPki, der, resign, snp, vectors_dir

ANY_IMAGE = ("--any-image", "--min-tcb", "bl=0,tee=0,snp=0,ucode=0")
"""No reference values, and the lowest TCB minimum, so that the TCB counts as evaluated."""


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "attestation.sevsnp.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def v() -> Path:
    return vectors_dir() / "snp"


def one_line_rejection(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    said = (proc.stdout + proc.stderr).splitlines()  # the result on stdout, errors on stderr
    lines = [ln for ln in said if "rejected:" in ln or ln.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_virtee_report_verifies_with_json(v):
    proc = cli(v / "virtee-sev/report_milan.bin", "--vcek", v / "virtee-sev/vcek_milan.der", "--json")
    failed = [c["name"] for c in json.loads(proc.stdout)["checks"] if not c["passed"]]
    assert failed == ["appraisal_reference", "appraisal_tcb"]  # genuine, but nothing pinned
    proc = cli(
        v / "virtee-sev/report_milan.bin",
        "--vcek",
        v / "virtee-sev/vcek_milan.der",
        "--json",
        *ANY_IMAGE,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["type"] == "sev-snp"
    names = [c["name"] for c in out["checks"]]
    assert names[:4] == ["format", "signature_algo", "signing_key", "certificate"]
    assert {"report_signature", "chain", "chain_algorithms", "hwid", "tcb", "policy_debug"} <= set(names)
    claims = out["claims"]
    raw = snp("virtee-sev/report_milan.bin")
    assert claims["measurement"] == raw[0x90:0xC0].hex() and claims["report_data"] == raw[0x50:0x90].hex()
    assert claims["chip_id"] == raw[0x1A0:0x1E0].hex()
    assert claims["reported_tcb"] == {
        "raw": "7308000000000003",
        "bootloader": 3,
        "tee": 0,
        "snp": 8,
        "microcode": 115,
    }
    assert claims["policy"]["debug"] is False and claims["policy"]["migrate_ma"] is False
    assert claims["product"] == "Milan"


def test_go_sev_guest_report_debug_refused_unless_allowed(v):
    args = (
        v / "go-sev-guest/attestation.bin",
        "--vcek",
        v / "go-sev-guest/vcek.testcer",
        "--chain",
        v / "go-sev-guest/ask_ark_milan.pem",
    )
    assert "policy_debug" in one_line_rejection(cli(*args))
    allowed = cli(*args, "--allow-debug", "--report-data", "0102030405" + "00" * 59, *ANY_IMAGE)
    assert allowed.returncode == 0, allowed.stderr


def test_wrong_vcek_rejected(v):
    line = one_line_rejection(
        cli(v / "virtee-sev/report_milan.bin", "--vcek", v / "go-sev-guest/vcek.testcer")
    )
    assert "report_signature" in line


def test_chain_of_another_product_rejected(v):
    line = one_line_rejection(
        cli(
            v / "virtee-sev/report_milan.bin",
            "--vcek",
            v / "virtee-sev/vcek_milan.der",
            "--chain",
            v / "go-sev-guest/ask_ark_genoa.pem",
        )
    )
    assert "chain" in line


def test_real_vcek_after_not_after_rejected(v):
    line = one_line_rejection(
        cli(
            v / "go-sev-guest/attestation.bin",
            "--vcek",
            v / "go-sev-guest/vcek.testcer",
            "--allow-debug",
            "--at",
            "2029-09-25T00:00:00Z",
        )
    )
    assert "expired" in line


def test_synthetic_expired_vlek_rejected_at_current_time(tmp_path):
    """SYNTHETIC: a test ARK/ASVK/VLEK made here (no real VLEK exists in the vectors)."""
    pki = SyntheticPki(product="Milan", kind="vlek")
    key = ec.generate_private_key(ec.SECP384R1())
    raw = snp("virtee-sev/report_milan.bin")
    spls = report.parse(raw).tcb("reported_tcb", Product.MILAN).parts()
    vlek = pki.leaf(
        key,
        spls=spls,
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(2024, 12, 31, tzinfo=dt.UTC),
    )
    files = {
        "report.bin": resign(raw, key, signing_key=1),
        "vlek.der": der(vlek),
        "chain.pem": pki.chain_pem(),
        "ark.pem": pki.ark_pem(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    args = (
        tmp_path / "report.bin",
        "--vcek",
        tmp_path / "vlek.der",
        "--chain",
        tmp_path / "chain.pem",
        "--ark",
        tmp_path / "ark.pem",
    )
    assert "expired" in one_line_rejection(cli(*args))
    inside = cli(*args, "--at", "2024-06-01", *ANY_IMAGE)
    assert inside.returncode == 0, inside.stderr


@pytest.mark.parametrize("offset", [21, 0x50, 0x90, 0x1A0, 0x29F, 0x2A0, 0x330, 0x49F])
def test_flipped_bytes_rejected(tmp_path, capsys, offset):
    raw = bytearray(snp("virtee-sev/report_milan.bin"))
    raw[offset] ^= 0x01
    path = tmp_path / "r.bin"
    path.write_bytes(bytes(raw))
    assert main([str(path), "--vcek", str(vectors_dir() / "snp/virtee-sev/vcek_milan.der")]) == 1
    assert "rejected:" in capsys.readouterr().out


@pytest.mark.parametrize("size", [0, 1, 4, 0x2A0, 0x49F])
def test_truncated_input_is_rejected_without_traceback(tmp_path, v, size):
    path = tmp_path / "short.bin"
    path.write_bytes(snp("virtee-sev/report_milan.bin")[:size])
    proc = cli(path, "--vcek", v / "virtee-sev/vcek_milan.der", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    assert (
        out["ok"] is False and out["checks"][0]["name"] == "format" and "short" in out["checks"][0]["detail"]
    )


def test_truncated_certificate_and_garbage_crl(tmp_path, v, capsys):
    cut = tmp_path / "vcek.der"
    cut.write_bytes(snp("virtee-sev/vcek_milan.der")[:700])
    report_path = str(v / "virtee-sev/report_milan.bin")
    assert main([report_path, "--vcek", str(cut)]) == 1
    crl = tmp_path / "crl.der"
    crl.write_bytes(b"\x30\x03\x02\x01\x00")
    assert main([report_path, "--vcek", str(v / "virtee-sev/vcek_milan.der"), "--crl", str(crl)]) == 1
    err = capsys.readouterr().out  # the checks are the result: stdout
    assert "FAIL certificate" in err and "FAIL crl" in err


def test_usage_errors_exit_2(tmp_path, v, capsys):
    report_path = str(v / "virtee-sev/report_milan.bin")
    vcek = str(v / "virtee-sev/vcek_milan.der")
    assert main([report_path]) == 2  # --vcek is required
    assert main([report_path, "--vcek", str(tmp_path / "missing.der")]) == 2
    assert main([report_path, "--vcek", vcek, "--measurement", "zz"]) == 2
    assert main([report_path, "--vcek", vcek, "--min-tcb", "bl"]) == 2
    assert main([report_path, "--vcek", vcek, "--at", "yesterday"]) == 2
    capsys.readouterr()


def test_policy_flags(v, capsys):
    raw = snp("virtee-sev/report_milan.bin")
    base = [str(v / "virtee-sev/report_milan.bin"), "--vcek", str(v / "virtee-sev/vcek_milan.der")]
    good = [
        "--measurement",
        raw[0x90:0xC0].hex(),
        "--host-data",
        "00" * 32,
        "--min-tcb",
        "bl=3,snp=8,ucode=115",
        "--vmpl",
        "0",
        "--product",
        "milan",
    ]
    assert main(base + good) == 1  # the flags validate; the reference check still wants a pin
    assert main([*base, *good, "--any-image"]) == 0
    assert main([*base, "--min-tcb", "snp=9"]) == 1
    assert main([*base, "--product", "turin"]) == 1
    assert main([*base, "--measurement", "00" * 48]) == 1
    capsys.readouterr()
