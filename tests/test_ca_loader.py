"""The loader enrolling against a real CA server: `ca init`, `ca serve`, `demo --ca-url`,
`report verify --ca`, and the boot's refusal paths (no workload without a certificate)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.ca_helpers import REPO, pin_hardware


def _loader(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class CaProcess:
    """`trusted-loader ca serve` on 127.0.0.1 with a free port, as a subprocess."""

    def __init__(self, ca_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loader", "ca", "serve", "--dir", str(ca_dir), "--listen", "127.0.0.1:0"],
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                return match.group(1)
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError("ca serve did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def ca_server(tmp_path):
    servers: list[CaProcess] = []

    def start(name: str, *, allow_mock: bool) -> tuple[Path, str]:
        ca_dir = tmp_path / name
        flags = ["--allow-mock"] if allow_mock else []
        done = _loader("ca", "init", "--dir", str(ca_dir), *flags)
        assert done.returncode == 0, done.stderr
        if not allow_mock:
            pin_hardware(ca_dir)
        servers.append(CaProcess(ca_dir))
        return ca_dir, servers[-1].url

    yield start
    for server in servers:
        server.stop()


def test_demo_enrolls_and_its_report_verifies_only_with_that_ca(ca_server, tmp_path):
    ca_dir, url = ca_server("ca", allow_mock=True)
    workdir = tmp_path / "demo"
    demo = _loader("demo", "--workdir", str(workdir), "--ca-url", url)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert f"enrolled at {url}" in demo.stdout

    report = workdir / "report.cbor"
    ref = str(workdir / "reference.json")
    ok = _loader(
        "report",
        "verify",
        str(report),
        "--ca",
        str(ca_dir / "ca.pem"),
        "--allow-mock",
        "--reference",
        ref,
        "--json",
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"name": "certificate"' in ok.stdout and "issued by the given CA" in ok.stdout

    other = tmp_path / "other"
    assert _loader("ca", "init", "--dir", str(other), "--allow-mock").returncode == 0
    bad = _loader(
        "report", "verify", str(report), "--ca", str(other / "ca.pem"), "--allow-mock", "--reference", ref
    )
    assert bad.returncode == 1
    assert "does not chain to the given CA" in bad.stdout

    no_ca = _loader("report", "verify", str(report), "--allow-mock", "--reference", ref)
    assert no_ca.returncode == 1 and "pass --ca" in no_ca.stdout

    shown = _loader("report", "show", str(report), "--json")
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    assert ca_cert.subject.rfc4514_string() in shown.stdout


def test_ca_without_allow_mock_refuses_and_the_workload_never_runs(ca_server, tmp_path):
    ca_dir, url = ca_server("strict", allow_mock=False)
    workdir = tmp_path / "demo"
    demo = _loader("demo", "--workdir", str(workdir), "--ca-url", url)
    assert demo.returncode == 4, demo.stdout + demo.stderr  # attestation failed: no certificate
    assert "verdict   abort" in demo.stdout
    assert "CA refused the certificate (policy_refused)" in demo.stdout
    assert "'mock' is not allowed" in demo.stdout
    assert not (workdir / "output").exists()

    report = workdir / "report.cbor"
    shown = _loader("report", "show", str(report), "--json")
    assert '"verdict": "abort"' in shown.stdout and '"workload": null' in shown.stdout
    strict = _loader(
        "report", "verify", str(report), "--ca", str(ca_dir / "ca.pem"), "--allow-mock", "--any-image"
    )
    assert strict.returncode == 1  # the abort report is self-issued, not certified by the CA


def _config(workdir: Path, ca_lines: str) -> Path:
    """The demo's job, reconfigured with the given [ca] table."""
    from loader.cli import demo

    path = demo.build(workdir)
    path.write_text(path.read_text() + "\n[ca]\n" + ca_lines)
    return path


def test_run_aborts_when_the_ca_is_unreachable(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _config(tmp_path / "job", f'url = "http://127.0.0.1:{port}"\nattempts = 2\n')
    run = _loader("run", "--config", str(config))
    assert run.returncode == 4, run.stderr
    assert "unavailable after 2 attempt(s)" in run.stderr
    assert not (tmp_path / "job" / "output").exists()


def test_run_aborts_when_the_ca_is_not_the_pinned_one(ca_server, tmp_path):
    _, url = ca_server("ca", allow_mock=True)
    other = tmp_path / "pinned"
    assert _loader("ca", "init", "--dir", str(other), "--allow-mock").returncode == 0
    config = _config(tmp_path / "job", f'url = "{url}"\nca_cert = "{other / "ca.pem"}"\n')
    run = _loader("run", "--config", str(config))
    assert run.returncode == 4, run.stderr
    assert "does not chain to the CA" in run.stderr


def test_config_rejects_a_non_http_ca_url(tmp_path):
    config = _config(tmp_path / "job", 'url = "file:///etc/passwd"\n')
    run = _loader("run", "--config", str(config))
    assert run.returncode == 2
    assert "ca.url: expected an http:// or https:// URL" in run.stderr
