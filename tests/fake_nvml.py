"""Fake NVML modules for the attester tests.

`vector_nvml` serves the real Hopper report and chain from tests/vectors: the GPU ignores the
nonce it is given (the report's nonce is fixed), which is what the parsing and verification
path needs and what the attester's nonce check must catch. `mock_nvml` serves mock GPUs that
sign fresh reports (attestation.nvidia.mockgpu). Both reuse MockNvml's pynvml-shaped API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attestation.nvidia.mockgpu import MockGpu, MockNvml
from tests.nvidia_helpers import CHAIN, REPORT


@dataclass
class VectorGpu:
    report_text: bytes
    chain: bytes
    as_hex: bool = False

    def certificate_chain(self) -> bytes:
        return self.chain

    def attestation_report(self, nonce: bytes) -> bytes:
        return self.report_text if self.as_hex else bytes.fromhex(self.report_text.decode())


class FailingNvml(MockNvml):
    """NVML whose library is present but whose calls fail (driver not loaded, GPU lost)."""

    def __init__(self, *, fail_init: bool = False, fail_report: bool = False, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.fail_init, self.fail_report = fail_init, fail_report

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML_ERROR_DRIVER_NOT_LOADED")
        super().nvmlInit()

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle, nonce):  # type: ignore[no-untyped-def]
        if self.fail_report:
            raise self.NVMLError("NVML_ERROR_GPU_IS_LOST")
        return super().nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)


def vector_nvml(vectors: Path, count: int = 1, **kw: object) -> FailingNvml:
    gpu = VectorGpu((vectors / REPORT).read_bytes(), (vectors / CHAIN).read_bytes())
    return FailingNvml(devices=[gpu] * count, **kw)


def mock_nvml(count: int = 1, **kw: object) -> FailingNvml:
    return FailingNvml(devices=[MockGpu() for _ in range(count)], **kw)
