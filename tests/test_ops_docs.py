"""The documentation holds: samples pass `config check`, links resolve, exit codes are complete,
the README stays short and keeps the two commands CI runs, nothing points outside the clone."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.ops_helpers import REPO, run_loader

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_SAMPLE = re.compile(r"```toml sample\n(.*?)```", re.DOTALL)


def _samples() -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        for index, block in enumerate(_SAMPLE.findall(path.read_text())):
            found.append((path.relative_to(REPO).as_posix(), index, block))
    return found


def test_there_are_samples_to_check() -> None:
    assert _samples(), "no ```toml sample block in README.md or docs/"


@pytest.mark.parametrize(("doc", "index", "block"), _samples(), ids=lambda v: str(v)[:30])
def test_each_documented_sample_passes_config_check(tmp_path: Path, doc: str, index: int, block: str) -> None:
    text = block
    if os.geteuid() != 0 and "staging_dir" not in text:
        # the defaults live under /var/lib/trusted-loader, writable only by root: an ordinary
        # user checks the same sample with its state directories moved into the test's own
        text = "\n".join(f'{k}_dir = "{tmp_path / k}"' for k in ("staging", "spool", "output")) + "\n" + text
    config = tmp_path / "loader.toml"
    config.write_text(text)
    done = run_loader("config", "check", config)
    assert done.returncode == 0, f"{doc} sample {index}: {done.stderr}"


def test_readme_is_short_and_keeps_the_two_commands_ci_runs() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 120
    one = next(i for i, line in enumerate(lines) if line.startswith("# 1. "))
    two = next(i for i, line in enumerate(lines) if line.startswith("# 2. "))
    assert "trusted-loader demo" in lines[one + 1]
    assert "python -m pytest" in lines[two + 1]  # .ci/run runs the line after "# 2. "


def test_relative_links_resolve_and_nothing_points_outside_the_clone() -> None:
    for path in DOCS:
        text = path.read_text()
        assert "../shared" not in text, path  # nothing outside the clone
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name}: link to {target} does not resolve"


_RUN_CODES = {
    "0": r"\b0\b",
    "2": r"\b2\b[^.;\n]*config",
    "3": r"\b3\b[^.;\n]*policy",
    "4": r"\b4\b[^.;\n]*attestation",
    "5": r"\b5\b[^.;\n]*workload",
    "6": r"\b6\b[^.;\n]*not published",
    "143": r"\b143\b[^.;\n]*SIGTERM",
}


@pytest.mark.parametrize(
    "where",
    ["README.md", "docs/operations.md", "docs/commands.md", "loader/systemd/trusted-loader.service"],
)
def test_runs_exit_codes_are_complete_everywhere(where: str) -> None:
    text = re.sub(r"\s+", " ", (REPO / where).read_text())
    missing = [code for code, pattern in _RUN_CODES.items() if not re.search(pattern, text)]
    assert missing == [], f"{where} does not document run's exit code(s) {missing}"
