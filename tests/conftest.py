"""Shared fixtures: the real attestation vectors, and demo job directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.vectors import vectors_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def vectors() -> Path:
    return vectors_dir()


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
    from loader.cli import demo

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


@pytest.fixture(scope="session", autouse=True)
def _no_test_writes_the_real_state_dir() -> Any:
    """The tests run as root, so /var/lib would be writable: every job in a test must name
    its own staging, spool and output directories rather than use the defaults there."""
    from loader.boot.config import STATE_DIR

    existed = STATE_DIR.exists()
    yield
    assert existed or not STATE_DIR.exists(), f"a test wrote {STATE_DIR}: give its job explicit directories"
