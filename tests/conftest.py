"""Shared fixtures: the real attestation vectors, and demo job directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _vectors_dir() -> Path | None:
    candidates = [
        os.environ.get("TL_VECTORS"),
        REPO.parent / "shared" / "vectors",
        REPO / "shared" / "vectors",
    ]
    for c in candidates:
        if c and (Path(c) / "MANIFEST.md").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def vectors() -> Path:
    path = _vectors_dir()
    if path is None:
        pytest.fail("attestation vectors not found: set TL_VECTORS or put shared/vectors beside the repo")
    return path


def cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m loader ...` the way a user runs `trusted-loader ...`."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "loader", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A demo job directory with inputs, approved list and loader.toml, not yet run."""
    from loader import demo

    workdir = tmp_path / "demo"
    demo.build(workdir)
    return workdir


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """One real demo run (shared by the read-only tests): its directory and report bytes."""
    workdir = tmp_path_factory.mktemp("demo-run") / "demo"
    result = cli("demo", "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    return workdir, (workdir / "report.cbor").read_bytes()
