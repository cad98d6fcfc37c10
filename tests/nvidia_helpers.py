"""Shared helpers of the NVIDIA tests: where the real vectors are, and how to load them."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from attestation.evidence import Evidence

REPO = Path(__file__).resolve().parents[1]
REPORT = "nvidia/nvtrust/hopperAttestationReport.txt"
CHAIN = "nvidia/nvtrust/hopperCertChain.txt"
VBIOS_RIM = "nvidia/nvtrust/1010_0200_882_96005E0001_PROD.swidtag"
VBIOS_RIM_TEST = "nvidia/nvtrust/1010_0200_882_96005E0001_test_no_gpu.swidtag"
DRIVER_RIM_TEST = "nvidia/nvtrust/Driver_RIM_test_no_gpu.swidtag"
# From MANIFEST.md (section C) and the report itself.
REPORT_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)  # the vectors' reference date
RIM_VALID = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)  # inside every RIM signing certificate's validity


def find_vectors() -> Path | None:
    env = os.environ.get("TL_VECTORS")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "vectors", REPO / ".." / "shared" / "vectors"]
    for path in candidates:
        if (path / "MANIFEST.md").is_file():
            return path.resolve()
    return None


@pytest.fixture(scope="session")
def vectors() -> Path:
    path = find_vectors()
    if path is None:
        pytest.skip("real vectors not found: set TL_VECTORS or place shared/vectors beside the repo")
    return path


def real_evidence(vectors: Path) -> Evidence:
    return Evidence(
        type="nvidia", data=(vectors / REPORT).read_bytes(), aux={"chain": (vectors / CHAIN).read_bytes()}
    )
