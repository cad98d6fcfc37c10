"""NvidiaAttester over fake NVML (real vectors and mock GPUs), and the mock-GPU verifier."""

from __future__ import annotations

import datetime as dt
import os
import sys

import pytest

from attestation import binding, verifier_for
from attestation.errors import AttesterFailure, AttesterUnavailable
from attestation.evidence import Evidence, Trust
from attestation.nvidia import spdm
from attestation.nvidia.attester import NvidiaAttester
from attestation.nvidia.mockgpu import MockGpu, MockGpuAttester
from tests.fake_nvml import mock_nvml, vector_nvml
from tests.nvidia_helpers import CHAIN, NOW, REPORT_NONCE


def test_real_gpu_evidence_is_collected_and_verifies(vectors):
    nvml = vector_nvml(vectors, count=2)
    evidence = NvidiaAttester(nvml=nvml).collect_all(REPORT_NONCE)
    assert [e.type for e in evidence] == ["nvidia", "nvidia"]
    assert evidence[0].aux["chain"] == (vectors / CHAIN).read_bytes().rstrip(b"\x00")
    assert len(evidence[0].data) == 4117  # raw bytes, NVML's padding cut at attestationReportSize
    assert nvml.initialised == 0  # nvmlShutdown after nvmlInit
    for ev in evidence:
        result = verifier_for("nvidia").verify(ev, expected_report_data=REPORT_NONCE, trust=Trust(), at=NOW)
        assert result.ok, result.reason()


def test_a_report_for_another_nonce_is_refused_by_the_attester(vectors):
    with pytest.raises(AttesterFailure, match=f"carries nonce {REPORT_NONCE.hex()}, expected {'00' * 32}"):
        NvidiaAttester(nvml=vector_nvml(vectors)).collect_all(bytes(32))


def test_cc_mode_off_is_unavailable_and_devtools_is_refused(vectors):
    with pytest.raises(AttesterUnavailable, match="not enabled"):
        NvidiaAttester(nvml=vector_nvml(vectors, cc_enabled=False)).collect_all(REPORT_NONCE)
    with pytest.raises(AttesterFailure, match="dev-tools"):
        NvidiaAttester(nvml=vector_nvml(vectors, devtools=True)).collect_all(REPORT_NONCE)


def test_nvml_errors_become_attestation_errors(vectors):
    with pytest.raises(AttesterUnavailable, match=r"NVML initialisation failed.*DRIVER_NOT_LOADED"):
        NvidiaAttester(nvml=vector_nvml(vectors, fail_init=True)).collect_all(REPORT_NONCE)
    nvml = vector_nvml(vectors, fail_report=True)
    with pytest.raises(AttesterFailure, match="GPU_IS_LOST"):
        NvidiaAttester(nvml=nvml).collect_all(REPORT_NONCE)
    assert nvml.initialised == 0


def test_malformed_report_or_chain_from_nvml_is_refused(vectors):
    nvml = vector_nvml(vectors)
    nvml.devices[0].report_text = nvml.devices[0].report_text[:-20]
    with pytest.raises(AttesterFailure, match="malformed attestation report"):
        NvidiaAttester(nvml=nvml).collect_all(REPORT_NONCE)
    nvml = vector_nvml(vectors)
    nvml.devices[0].chain = b"\x30\x82garbage"
    with pytest.raises(AttesterFailure, match="not PEM"):
        NvidiaAttester(nvml=nvml).collect_all(REPORT_NONCE)


def test_nonce_length_is_checked():
    with pytest.raises(AttesterFailure, match="32 bytes"):
        NvidiaAttester(nvml=mock_nvml()).collect_all(b"short")


def test_no_gpus_gives_no_evidence():
    assert NvidiaAttester(nvml=mock_nvml(count=0)).collect_all(bytes(32)) == []


def test_without_nvidia_ml_py_the_attester_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with pytest.raises(AttesterUnavailable, match=r"nvidia-ml-py.*\[nvidia\]"):
        NvidiaAttester().collect_all(bytes(32))


def test_set_ready_tells_nvml(vectors):
    nvml = vector_nvml(vectors)
    NvidiaAttester(nvml=nvml).set_ready()
    assert nvml.ready_state == 1 and nvml.initialised == 0


# --- the mock GPU: fresh reports, bound to the loader's key and nonce ---


def _binding():
    spki, nonce = os.urandom(91), os.urandom(32)
    return binding.gpu_nonce(spki, nonce)


def verify_mock(ev, nonce, allow_mock=True):
    return verifier_for("mock-gpu").verify(
        ev, expected_report_data=nonce, trust=Trust(allow_mock=allow_mock), at=dt.datetime.now(dt.UTC)
    )


def test_mock_gpu_reports_are_fresh_and_bound_to_the_nonce():
    gpu_nonce = _binding()
    evidence = MockGpuAttester(count=2).collect_all(gpu_nonce)
    assert [e.type for e in evidence] == ["mock-gpu", "mock-gpu"]
    assert evidence[0].data != evidence[1].data  # fresh responder nonce and signature each time
    for ev in evidence:
        result = verify_mock(ev, gpu_nonce)
        assert result.ok, result.reason()
        assert result.is_mock and result.claims["mock"] is True
        assert result.report_data == gpu_nonce
        assert result.checks[0].name == "mock_allowed"


def test_mock_gpu_evidence_is_refused_without_allow_mock():
    gpu_nonce = _binding()
    (ev,) = MockGpuAttester().collect_all(gpu_nonce)
    result = verify_mock(ev, gpu_nonce, allow_mock=False)
    assert [c.name for c in result.failures] == ["mock_allowed"]


def test_mock_gpu_evidence_replayed_under_another_nonce_is_refused():
    (ev,) = MockGpuAttester().collect_all(_binding())
    result = verify_mock(ev, _binding())
    assert [c.name for c in result.failures] == ["nonce"]


def test_mock_gpu_evidence_is_not_nvidia_evidence():
    gpu_nonce = _binding()
    (ev,) = MockGpuAttester().collect_all(gpu_nonce)
    relabelled = Evidence("nvidia", ev.data, ev.aux)
    result = verifier_for("nvidia").verify(
        relabelled, expected_report_data=gpu_nonce, trust=Trust(allow_mock=True), at=NOW
    )
    assert "must end at the trusted root" in {c.name: c.detail for c in result.failures}["chain"]


def test_mock_gpu_with_a_different_fwid_fails_the_fwid_check():
    gpu_nonce = _binding()
    gpu = MockGpu(fwid=bytes(48))
    nvml = mock_nvml(count=0)
    nvml.devices = [gpu]
    (ev,) = NvidiaAttester(nvml=nvml).collect_all(gpu_nonce)
    result = verify_mock(Evidence("mock-gpu", ev.data, ev.aux), gpu_nonce)
    assert [c.name for c in result.failures] == ["fwid"]


def test_every_byte_of_a_mock_report_is_signed():
    gpu_nonce = _binding()
    (ev,) = MockGpuAttester().collect_all(gpu_nonce)
    for i in range(len(ev.data)):
        blob = bytearray(ev.data)
        blob[i] ^= 0x01
        result = verify_mock(Evidence("mock-gpu", bytes(blob), ev.aux), gpu_nonce)
        assert not result.ok, i
        assert {c.name for c in result.failures} & {"format", "signature", "nonce", "request"}, i
    assert spdm.parse(ev.data).request.nonce == gpu_nonce
