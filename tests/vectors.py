"""Where the real attestation vectors are: $TL_VECTORS, else ../shared/vectors beside the repo.

Missing vectors fail the run (never a silent skip): CI clones the repo with shared/ beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def vectors_dir() -> Path:
    env = os.environ.get("TL_VECTORS")
    candidates = [Path(env)] if env else [REPO.parent / "shared" / "vectors", REPO / "shared" / "vectors"]
    for path in candidates:
        if (path / "MANIFEST.md").is_file():
            return path.resolve()
    pytest.fail(
        f"attestation vectors not found (looked in {', '.join(map(str, candidates))}; set TL_VECTORS)"
    )
