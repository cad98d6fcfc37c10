"""Shared helpers of the NVIDIA tests: the real vector files (the `vectors` fixture is conftest's)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

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


def real_evidence(vectors: Path) -> Evidence:
    return Evidence(
        type="nvidia", data=(vectors / REPORT).read_bytes(), aux={"chain": (vectors / CHAIN).read_bytes()}
    )
