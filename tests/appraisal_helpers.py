"""The mock platform's reference values, for tests whose subject is not appraisal: reports of the
mock TEE are appraised against them (as the demo's are), never waved through."""

from __future__ import annotations

from pathlib import Path

from attestation.mock.attester import reference_entry
from attestation.nvidia.mockgpu import reference_entry as gpu_entry
from attestation.reference import Appraisal, parse_reference, reference_document

MOCK_REFERENCE = reference_document([reference_entry("test-mock"), gpu_entry("test-mock-gpu")])
MOCK = Appraisal(parse_reference(MOCK_REFERENCE, "tests/appraisal_helpers.py"))
"""The mock platform as the mock attester boots it (MRTD, RTMR0-3 before the loader), and the
mock GPU (driver and VBIOS versions)."""


def write_mock_reference(path: Path) -> Path:
    path.write_bytes(MOCK_REFERENCE)
    return path
