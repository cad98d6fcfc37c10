"""End to end: two data owners, an engine author and an order owner, on the mock TEE.

It runs when all approve; it aborts when a data owner's signature is missing, when the grants
name another approved list, when a grant was made for another CVM key (and in
the other abort cases below); in every abort no dataset is decrypted: the decryption function is
never reached, no plaintext is in staging when it is wiped, and the report says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loader.cli import demo
from loader.errors import TrustError
from loader.parties.cvmcert import load_chain, verify_cvm_certificate
from loader.parties.grants import create_grant, load_key_file
from loader.parties.seal import open_sealed
from loader.publish.spool import atomic_write
from loader.report.document import parse_report
from loader.report.partykeys import generate, load_private
from loader.report.signing import sign_policy
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.multiparty_helpers import (
    build,
    edit_config,
    install_probe,
    other_cvm_certificate,
    reasons_matching,
    run_with_agents,
)

REPO = Path(__file__).resolve().parents[1]


def _assert_nothing_decrypted(outcome, probe, workdir: Path) -> None:
    assert outcome.verdict == "abort"
    assert outcome.exit_code == 3
    assert probe.decrypt_calls == []
    assert probe.staging_files_at_wipe > 0  # the ciphertexts were staged and inspected
    assert probe.plaintext_at_wipe == []
    payload = parse_report(outcome.report).payload
    assert payload["wipe"]["decrypted"] == 0
    assert payload["workload"] is None
    assert all(i["digest"] == "" for i in payload["inputs"] if i["encrypted"] is not None)
    assert not (workdir / "output").exists() or not any((workdir / "output").iterdir())
    check = verify_report(outcome.report, allow_mock=True, appraisal=MOCK)
    assert check.ok, check.reason()


def test_runs_when_all_approve_and_only_the_owner_opens_the_output(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    outcome, errors = run_with_agents(config, tmp_path)
    assert errors == []
    assert outcome.verdict == "run", outcome.reasons
    assert outcome.exit_code == 0
    assert sorted(probe.decrypt_calls) == ["clinic", "lab"]
    assert len(probe.plaintext_at_wipe) == 2  # the probe does see plaintext when there is some
    assert not any((tmp_path / "staging").iterdir())

    report = parse_report(outcome.report)
    payload = report.payload
    assert payload["wipe"]["decrypted"] == 2
    assert payload["wipe"]["files"] == payload["wipe"]["overwritten"] > 0
    assert sorted(s["name"] for s in payload["policy"]["signers"]) == ["clinic", "engine-author", "lab"]
    assert len(payload["policy"]["signatures"]) == 3
    for item in payload["inputs"]:
        if item["role"] == "dataset":
            plain = tmp_path / "parties" / item["name"] / "data"
            assert item["digest"] == item["expected"] == demo.digest_path(plain).digest
            enc = tmp_path / "inputs" / "datasets" / f"{item['name']}.tlenc"
            assert item["encrypted"]["digest"] == "sha256:" + hashlib.sha256(enc.read_bytes()).hexdigest()
            grant = tmp_path / "grants" / f"{item['name']}.grant"
            assert item["encrypted"]["grant"] == "sha256:" + hashlib.sha256(grant.read_bytes()).hexdigest()
    check = verify_report(outcome.report, allow_mock=True, appraisal=MOCK)
    assert check.ok, check.reason()
    assert ("signatures", True) in [(n, p) for n, p, _ in check.checks]

    sealed = outcome.output_dir / "output.sealed"
    assert sorted(p.name for p in outcome.output_dir.iterdir()) == ["output.sealed"]  # nothing in clear
    output = payload["workload"]["output"]
    assert output["digest"] == "sha256:" + hashlib.sha256(sealed.read_bytes()).hexdigest()
    owner = load_private(tmp_path / "parties" / "order-owner" / "key.pem")
    assert (
        open_sealed(sealed, owner, tmp_path / "opened", expected_digest=output["digest"]) == output["files"]
    )
    results = json.loads((tmp_path / "opened" / "output" / "results.json").read_text())
    assert results["pooled"]["age"]["count"] == 400
    assert (tmp_path / "opened" / "logs" / "stdout.log").read_text().startswith("pooled ")
    for party in ("lab", "clinic", "engine-author"):
        with pytest.raises(TrustError, match="sealed to key"):
            open_sealed(sealed, load_private(tmp_path / "parties" / party / "key.pem"), tmp_path / party)
    stranger = generate("x25519")  # same key type as the owner's, different key
    with pytest.raises(TrustError, match="sealed to key"):
        open_sealed(sealed, stranger, tmp_path / "stranger")


def test_aborts_when_a_data_owner_did_not_sign(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    edit_config(config, '"approved.json.clinic.sig", ', "")
    outcome, _ = run_with_agents(config, tmp_path)
    assert reasons_matching(outcome, r"required signer 'clinic' .* has no valid signature")
    assert not reasons_matching(outcome, "'lab'")
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def test_aborts_when_the_grants_name_another_approved_list(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    other = "sha256:" + hashlib.sha256(b"another approved list").hexdigest()
    outcome, errors = run_with_agents(
        config, tmp_path, lambda: demo.owners_grant(tmp_path, timeout=20, policy=other)
    )
    assert errors == []
    found = reasons_matching(outcome, rf"grant for dataset '(lab|clinic)': made for approved list {other}")
    assert len(found) == 2
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def test_aborts_when_the_measured_engine_is_not_the_approved_one(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    engine = tmp_path / "inputs" / "engine"
    engine.write_bytes(engine.read_bytes() + b"\n# changed after approval\n")
    outcome, _ = run_with_agents(config, tmp_path)
    assert reasons_matching(outcome, r"^engine: digest .* does not match the approved")
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def _grants_to(workdir: Path, cert_pem: bytes | None = None, tamper: str | None = None) -> None:
    """Owners' agent: grants to `cert_pem` (default: the loader's published certificate);
    `tamper` names a dataset whose grant gets one bit flipped in `wrapped` before it is written."""
    from loader.report.policy import load_policy

    cert = workdir / "cvm-cert.pem"
    deadline = time.monotonic() + 20
    while not cert.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    cert_pem = cert_pem or cert.read_bytes()
    approved = load_policy(workdir / "approved.json")
    identity = verify_cvm_certificate(
        load_chain(cert_pem, "CVM"), what="CVM", at=dt.datetime.now(dt.UTC), allow_mock=True, appraisal=MOCK
    )
    for name in demo.DATASETS:
        key = load_key_file(workdir / "parties" / name / "dataset.key")
        grant = bytearray(create_grant(key, identity.public_key, policy=approved.digest))
        if name == tamper:
            grant[-5] ^= 0x01  # inside `wrapped`, the last field of the canonical map
        (workdir / "grants").mkdir(exist_ok=True)
        atomic_write(workdir / "grants" / f"{name}.grant", bytes(grant))


def test_aborts_when_a_grant_was_made_for_another_cvm(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    outcome, errors = run_with_agents(config, tmp_path, lambda: _grants_to(tmp_path, other_cvm_certificate()))
    assert errors == []
    assert len(reasons_matching(outcome, r"made for CVM key sha256:[0-9a-f]{64}, not this CVM's key")) == 2
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def test_aborts_when_a_grant_is_tampered_with(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)

    outcome, errors = run_with_agents(config, tmp_path, lambda: _grants_to(tmp_path, tamper="lab"))
    assert errors == []
    assert reasons_matching(outcome, r"grant for dataset 'lab': does not open with this CVM's key")
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def test_aborts_when_no_grant_arrives(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path, timeout=0.5)
    outcome, _ = run_with_agents(config, tmp_path, lambda: None)
    assert len(reasons_matching(outcome, r"did not arrive within 0.5 s")) == 2
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def test_aborts_when_the_list_changed_after_signing(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    policy = tmp_path / "approved.json"
    policy.write_bytes(policy.read_bytes().replace(b'"allow_debug": false', b'"allow_debug": true'))
    outcome, _ = run_with_agents(config, tmp_path)
    for party in ("lab", "clinic", "engine-author"):
        assert reasons_matching(outcome, rf"signer '{party}': signature does not verify over sha256:")
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def test_aborts_on_an_extra_or_expired_signature(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    document = (tmp_path / "approved.json").read_bytes()
    stranger = generate("ed25519")
    now = dt.datetime.now(dt.UTC)
    (tmp_path / "stranger.sig").write_bytes(
        sign_policy(document, stranger, issued=now, expires=now + dt.timedelta(days=1))
    )
    lab = load_private(tmp_path / "parties" / "lab" / "key.pem")
    old = now - dt.timedelta(days=60)
    (tmp_path / "approved.json.lab.sig").write_bytes(
        sign_policy(document, lab, issued=old, expires=old + dt.timedelta(days=30))
    )
    edit_config(config, "signatures = [", 'signatures = ["stranger.sig", ')
    outcome, _ = run_with_agents(config, tmp_path)
    assert reasons_matching(
        outcome, r"stranger.sig: signed by key sha256:[0-9a-f]{64}, which is not a trusted"
    )
    assert reasons_matching(outcome, r"approved.json.lab.sig: signer 'lab': signature expired at ")
    _assert_nothing_decrypted(outcome, probe, tmp_path)


def _resign(payload: dict, mutate) -> bytes:  # type: ignore[type-arg]
    """Re-issue a report as a (mock) loader would: fresh key, nonce, evidence and certificate,
    so every check but the ones `mutate` breaks passes."""
    from cryptography.hazmat.primitives import serialization

    from attestation import binding
    from attestation.mock.attester import MockAttester
    from certs.selfissue import self_issue
    from loader.boot.keys import EphemeralKey
    from loader.report.document import sign_report

    payload = json.loads(
        json.dumps(payload, default=lambda b: {"__b": b.hex()}),
        object_hook=lambda d: bytes.fromhex(d["__b"]) if set(d) == {"__b"} else d,
    )
    mutate(payload)
    key, nonce = EphemeralKey(), os.urandom(32)
    evidence = MockAttester().collect(binding.report_data(key.spki, nonce, []))
    payload.update(key={"alg": "ES384", "spki": key.spki}, nonce=nonce, evidence=[evidence.to_cbor_obj()])
    bundle = {"nonce": nonce, "evidence": payload["evidence"], "claims": {}}
    cert = self_issue(key.private, common_name="forger", bundle=bundle, now=dt.datetime.now(dt.UTC))
    return sign_report(payload, x5chain=[cert.public_bytes(serialization.Encoding.DER)], sign=key.sign_raw)


def test_report_verify_re_judges_the_embedded_signatures(tmp_path):
    config = build(tmp_path)
    outcome, _ = run_with_agents(config, tmp_path)
    assert outcome.verdict == "run"
    payload = parse_report(outcome.report).payload

    control = verify_report(_resign(payload, lambda p: None), allow_mock=True, appraisal=MOCK)
    assert control.ok, control.reason()

    def drop_clinic(p: dict) -> None:  # type: ignore[type-arg]
        p["policy"]["signatures"] = [s for s in p["policy"]["signatures"] if "clinic" not in s["file"]]

    def flip(p: dict) -> None:  # type: ignore[type-arg]
        cose = bytearray(p["policy"]["signatures"][0]["cose"])
        cose[-1] ^= 1
        p["policy"]["signatures"][0]["cose"] = bytes(cose)

    def swap_key(p: dict) -> None:  # type: ignore[type-arg]
        from loader.report.partykeys import spki

        p["policy"]["signers"][0]["key"] = spki(generate("p384").public_key())

    for mutate, expected in ((drop_clinic, "'clinic'"), (flip, "does not verify"), (swap_key, "")):
        check = verify_report(_resign(payload, mutate), allow_mock=True, appraisal=MOCK)
        failed = [(n, d) for n, ok, d in check.checks if not ok]
        assert failed[0][0] == "signatures" and expected in failed[0][1], failed
        assert {n for n, _ in failed} <= {"signatures", "decision"}, failed


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "loader", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_command_line_three_party_flow(tmp_path):
    """The parties' commands and a `run` that waits for grants, each in its own process."""
    config = build(tmp_path, timeout=30)
    # The owners' own commands: re-encrypt lab's data, re-sign with the CLI, check the signatures.
    os.remove(tmp_path / "inputs" / "datasets" / "lab.tlenc")
    os.remove(tmp_path / "parties" / "lab" / "dataset.key")
    enc = _cli(
        "dataset",
        "encrypt",
        "parties/lab/data",
        "--name",
        "lab",
        "--out",
        "inputs/datasets/lab.tlenc",
        "--key-out",
        "parties/lab/dataset.key",
        cwd=tmp_path,
    )
    assert enc.returncode == 0, enc.stderr
    assert enc.stdout.strip() == demo.digest_path(tmp_path / "parties" / "lab" / "data").digest
    signed = _cli(
        "policy",
        "sign",
        "approved.json",
        "--key",
        "parties/lab/key.pem",
        "--out",
        "approved.json.lab.sig",
        cwd=tmp_path,
    )
    assert signed.returncode == 0, signed.stderr
    verified = _cli("policy", "verify", "--config", "loader.toml", "--json", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert sorted(json.loads(verified.stdout)["verified"]) == ["clinic", "engine-author", "lab"]
    unsigned = _cli(
        "policy",
        "verify",
        "approved.json",
        "--signature",
        "approved.json.lab.sig",
        "--signer",
        "lab=parties/lab/key.pub.pem",
        "--signer",
        "clinic=parties/clinic/key.pub.pem",
        cwd=tmp_path,
    )
    assert unsigned.returncode == 1
    assert "required signer 'clinic'" in unsigned.stderr

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    loader = subprocess.Popen(
        [sys.executable, "-m", "loader", "run", "--config", str(config), "--report-out", "report.cbor"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "cvm-cert.pem").exists():
            assert time.monotonic() < deadline and loader.poll() is None
            time.sleep(0.05)
        refused = _cli(
            "grant",
            "create",
            "--cert",
            "cvm-cert.pem",
            "--dataset-key",
            "parties/lab/dataset.key",
            "--policy",
            "approved.json",
            "--out",
            "grants/lab.grant",
            "--reference",
            "reference.json",
            cwd=tmp_path,
        )
        assert refused.returncode == 1 and "mock" in refused.stderr  # mock evidence needs --allow-mock
        for name in ("lab", "clinic"):
            made = _cli(
                "grant",
                "create",
                "--cert",
                "cvm-cert.pem",
                "--dataset-key",
                f"parties/{name}/dataset.key",
                "--policy",
                "approved.json",
                "--out",
                f"grants/{name}.grant",
                "--allow-mock",
                "--reference",
                "reference.json",
                cwd=tmp_path,
            )
            assert made.returncode == 0, made.stderr
        _, err = loader.communicate(timeout=60)
    finally:
        if loader.poll() is None:
            loader.kill()
    assert loader.returncode == 0, err
    sealed = next((tmp_path / "output").glob("*/output.sealed"))
    wrong = _cli("output", "open", str(sealed), "--key", "parties/lab/key.pem", "--out", "x", cwd=tmp_path)
    assert wrong.returncode == 1 and not (tmp_path / "x").exists()
    opened = _cli(
        "output",
        "open",
        str(sealed),
        "--key",
        "parties/order-owner/key.pem",
        "--out",
        "mine",
        "--report",
        "report.cbor",
        "--allow-mock",
        "--reference",
        "reference.json",
        cwd=tmp_path,
    )
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "mine" / "output" / "results.json").is_file()
    tampered = tmp_path / "tampered.sealed"
    raw = bytearray(sealed.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    tampered.write_bytes(raw)
    bad = _cli(
        "output", "open", str(tampered), "--key", "parties/order-owner/key.pem", "--out", "t", cwd=tmp_path
    )
    assert bad.returncode == 1 and "does not authenticate" in bad.stderr
    assert not (tmp_path / "t").exists()
    verify = _cli(
        "report", "verify", "report.cbor", "--allow-mock", "--reference", "reference.json", cwd=tmp_path
    )
    assert verify.returncode == 0, verify.stderr


def test_demo_with_parties_runs_and_opens_the_sealed_output(tmp_path):
    done = _cli("demo", "--parties", "--workdir", str(tmp_path / "d"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "output sealed to the order owner" in done.stdout
    assert "pooled age: n=400" in done.stdout
    assert "OK (mock TEE explicitly allowed, platform pinned)" in done.stdout
    assert (tmp_path / "d" / "opened" / "output" / "results.json").is_file()
