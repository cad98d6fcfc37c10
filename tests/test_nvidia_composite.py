"""Composite evidence: mock CPU + mock GPU in one report, bound; tampering either is caught.

The GPU evidence is collected first with nonce = gpu_nonce(spki, nonce); the CPU report_data
binds the digest of the GPU evidence list, so one CPU quote vouches for the whole machine.
The tamper tests re-sign the report with the run's own key (captured in the test) so that
the only thing wrong is the evidence: what fails must be the binding, not the signature.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from attestation import binding
from attestation.evidence import Evidence
from attestation.mock.attester import MockAttester
from attestation.nvidia.attester import NvidiaAttester
from attestation.nvidia.mockgpu import MockGpuAttester
from certs.selfissue import self_issue
from loader.boot.config import load_config
from loader.boot.keys import EphemeralKey
from loader.boot.sequence import EXIT_ABORTED, EXIT_ATTESTATION, boot
from loader.errors import ConfigError
from loader.report.document import parse_report, sign_report
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.conftest import cli
from tests.fake_nvml import mock_nvml, vector_nvml
from tests.review_helpers import keep_boot_keys


def with_gpu(demo_dir: Path, mode: str = "mock") -> Path:
    config = demo_dir / "loader.toml"
    config.write_text(config.read_text() + f'\n[gpu]\nmode = "{mode}"\n')
    return config


def checks(result) -> dict[str, tuple[bool, str]]:
    return {name: (passed, detail) for name, passed, detail in result.checks}


def test_mock_cpu_and_mock_gpu_end_to_end(demo_dir: Path) -> None:
    config = with_gpu(demo_dir)
    report = demo_dir / "report.cbor"
    run = cli("run", "--config", config, "--report-out", report)
    assert run.returncode == 0, run.stderr
    shown = json.loads(cli("report", "show", report, "--json").stdout)
    assert [e["type"] for e in shown["evidence"]] == ["mock", "mock-gpu"]
    ref = demo_dir / "reference.json"
    verified = cli("report", "verify", report, "--allow-mock", "--reference", ref, "--json")
    assert verified.returncode == 0, verified.stderr
    out = json.loads(verified.stdout)
    assert out["ok"] is True
    assert [e["type"] for e in out["evidence"]] == ["mock", "mock-gpu"]
    assert all(e["ok"] for e in out["evidence"])
    refused = cli("report", "verify", report, "--reference", ref)
    assert refused.returncode == 1  # both are mock: refused without --allow-mock


@pytest.fixture
def bound_run(demo_dir: Path, monkeypatch: pytest.MonkeyPatch):
    kept = keep_boot_keys(monkeypatch)
    outcome = boot(load_config(with_gpu(demo_dir)))
    assert outcome.exit_code == 0, outcome.reasons
    (key,) = kept
    return outcome.report, key


def resign(raw: bytes, key: EphemeralKey, evidence: list[Evidence]) -> bytes:
    payload = dict(parse_report(raw).payload)
    payload["evidence"] = [e.to_cbor_obj() for e in evidence]
    bundle = {"nonce": payload["nonce"], "evidence": payload["evidence"], "claims": {}}
    cert = self_issue(
        key.private, common_name="trusted-loader demo", bundle=bundle, now=dt.datetime.now(dt.UTC)
    )
    return sign_report(payload, x5chain=[cert.public_bytes(serialization.Encoding.DER)], sign=key.sign_raw)


def evidence_of(raw: bytes) -> list[Evidence]:
    return [Evidence.from_cbor_obj(e) for e in parse_report(raw).payload["evidence"]]


def test_the_cpu_report_data_binds_the_gpu_evidence(bound_run) -> None:
    raw, key = bound_run
    cpu, gpu = evidence_of(raw)
    payload = parse_report(raw).payload
    spki, nonce = payload["key"]["spki"], payload["nonce"]
    assert cpu.type == "mock" and gpu.type == "mock-gpu"
    result = verify_report(raw, allow_mock=True, appraisal=MOCK)
    assert result.ok, result.reason()
    assert result.evidence[0].report_data == binding.report_data(spki, nonce, [gpu])
    assert result.evidence[1].report_data == binding.gpu_nonce(spki, nonce)
    # The harness itself: re-signing the same evidence still verifies.
    assert verify_report(resign(raw, key, [cpu, gpu]), allow_mock=True, appraisal=MOCK).ok


def test_swapping_in_another_valid_gpu_report_breaks_the_cpu_binding(bound_run) -> None:
    raw, key = bound_run
    cpu, gpu = evidence_of(raw)
    payload = parse_report(raw).payload
    # A fresh, individually valid report from the mock GPU for the very same GPU nonce.
    (other,) = MockGpuAttester().collect_all(binding.gpu_nonce(payload["key"]["spki"], payload["nonce"]))
    assert other.data != gpu.data
    result = verify_report(resign(raw, key, [cpu, other]), allow_mock=True, appraisal=MOCK)
    failed = {n: d for n, (p, d) in checks(result).items() if not p}
    assert list(failed) == ["evidence[0]"]
    assert "report_data" in failed["evidence[0]"]


def test_dropping_the_gpu_evidence_breaks_the_cpu_binding(bound_run) -> None:
    raw, key = bound_run
    cpu, _ = evidence_of(raw)
    result = verify_report(resign(raw, key, [cpu]), allow_mock=True, appraisal=MOCK)
    assert [n for n, (p, _) in checks(result).items() if not p] == ["evidence[0]"]


def test_a_cpu_report_that_does_not_bind_the_gpu_is_rejected(bound_run) -> None:
    raw, key = bound_run
    _, gpu = evidence_of(raw)
    payload = parse_report(raw).payload
    unbound = MockAttester().collect(binding.report_data(payload["key"]["spki"], payload["nonce"], []))
    result = verify_report(resign(raw, key, [unbound, gpu]), allow_mock=True, appraisal=MOCK)
    assert [n for n, (p, _) in checks(result).items() if not p] == ["evidence[0]"]


def test_gpu_evidence_from_another_run_is_rejected_even_when_rebound(bound_run) -> None:
    raw, key = bound_run
    payload = parse_report(raw).payload
    spki, nonce = payload["key"]["spki"], payload["nonce"]
    (stale,) = MockGpuAttester().collect_all(binding.gpu_nonce(spki, os.urandom(32)))
    rebound = MockAttester().collect(binding.report_data(spki, nonce, [stale]))
    result = verify_report(resign(raw, key, [rebound, stale]), allow_mock=True, appraisal=MOCK)
    failed = {n: d for n, (p, d) in checks(result).items() if not p}
    assert list(failed) == ["evidence[1]"]
    assert "nonce" in failed["evidence[1]"]


def test_flipping_a_bit_of_either_evidence_breaks_report_verify(bound_run) -> None:
    raw, key = bound_run
    cpu, gpu = evidence_of(raw)
    for target in (0, 1):
        items = [cpu, gpu]
        data = bytearray(items[target].data)
        data[len(data) // 2] ^= 0x01
        items[target] = Evidence(items[target].type, bytes(data), items[target].aux)
        result = verify_report(resign(raw, key, items), allow_mock=True, appraisal=MOCK)
        assert not result.ok, target
        assert f"evidence[{target}]" in {n for n, (p, _) in checks(result).items() if not p}


# --- configuration and failure paths ---


def test_gpu_mode_is_validated(demo_dir: Path) -> None:
    config = demo_dir / "loader.toml"
    text = config.read_text()
    config.write_text(text + '\n[gpu]\nmode = "cuda"\n')
    with pytest.raises(ConfigError, match=r"gpu\.mode: expected one of \['none', 'nvml', 'mock'\]"):
        load_config(config)
    config.write_text(text.replace('tee = "mock"', 'tee = "tdx"') + '\n[gpu]\nmode = "mock"\n')
    with pytest.raises(ConfigError, match="only allowed with tee = 'mock'"):
        load_config(config)
    config.write_text(text)
    assert load_config(config).gpu_mode == "none"


def test_a_gpu_whose_report_has_the_wrong_nonce_aborts_the_job(demo_dir: Path, vectors: Path) -> None:
    # NVML serving the real Hopper report: its nonce is fixed, so it cannot answer this run's nonce.
    cfg = load_config(with_gpu(demo_dir, "nvml"))
    outcome = boot(cfg, gpu_attester=NvidiaAttester(nvml=vector_nvml(vectors)))
    assert outcome.exit_code == EXIT_ATTESTATION
    assert any("gpu" in r and "carries nonce" in r for r in outcome.reasons)
    assert [e["type"] for e in parse_report(outcome.report).payload["evidence"]] == ["mock"]
    assert verify_report(outcome.report, allow_mock=True, appraisal=MOCK).ok  # an honest abort report


def test_a_gpu_that_fails_verification_aborts_and_is_not_released(demo_dir: Path) -> None:
    # Mock-signed reports presented as real NVIDIA evidence: the chain is not NVIDIA's.
    cfg = load_config(with_gpu(demo_dir, "nvml"))
    nvml = mock_nvml()
    outcome = boot(cfg, gpu_attester=NvidiaAttester(nvml=nvml))
    assert outcome.exit_code == EXIT_ATTESTATION
    assert any("GPU 0 evidence does not verify: nvidia: chain" in r for r in outcome.reasons)
    assert nvml.ready_state is None


def test_require_gpu_without_gpu_evidence_aborts(demo_dir: Path) -> None:
    policy = demo_dir / "approved.json"
    doc = json.loads(policy.read_text())
    doc["flags"]["require_gpu"] = True
    policy.write_text(json.dumps(doc))
    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.exit_code == EXIT_ABORTED
    assert "gpu: the approved list requires GPU evidence and none was collected" in outcome.reasons
    assert verify_report(outcome.report, allow_mock=True, appraisal=MOCK).ok


def test_require_gpu_with_a_mock_gpu_runs(demo_dir: Path) -> None:
    policy = demo_dir / "approved.json"
    doc = json.loads(policy.read_text())
    doc["flags"]["require_gpu"] = True
    policy.write_text(json.dumps(doc))
    outcome = boot(load_config(with_gpu(demo_dir)))
    assert outcome.exit_code == 0, outcome.reasons
    assert verify_report(outcome.report, allow_mock=True, appraisal=MOCK).ok
