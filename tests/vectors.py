"""Where the real attestation vectors are: tests/vectors in this repository ($TL_VECTORS overrides).

The files are copied byte for byte from public repositories; tests/vectors/MANIFEST.md names each
source, commit and licence. Missing vectors fail the run (never a silent skip).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "tests" / "vectors"


def vectors_dir() -> Path:
    env = os.environ.get("TL_VECTORS")
    path = Path(env) if env else DEFAULT
    if not (path / "MANIFEST.md").is_file():
        raise FileNotFoundError(f"attestation vectors not found in {path} (tests/vectors, or set TL_VECTORS)")
    return path.resolve()
