"""The CA as a real HTTP server on loopback, and the loader's enrollment client against it."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from attestation import binding
from certs.ca import wire
from certs.ca.ratelimit import Rate
from certs.ca.service import BackgroundServer, Limits
from certs.csr import build_csr
from loader.boot.enroll import CaUnavailable, EnrollmentError, EnrollmentRefused, check_issued, enroll
from tests.ca_helpers import REPO, Cvm, make_ca, pin_hardware


@pytest.fixture(scope="module")
def mock_ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca") / "ca", allow_mock=True)


# These tests send bursts from one address; the rate limits have their own tests (test_ca_abuse).
UNLIMITED = Limits(enroll=Rate(1000.0, 1000.0), nonce=Rate(1000.0, 1000.0))


@pytest.fixture(scope="module")
def server(mock_ca):
    with BackgroundServer(mock_ca, limits=UNLIMITED) as url:
        yield url


def _call(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def _post(url: str, doc: object) -> tuple[int, dict]:
    status, ctype, body = _call(
        url, "POST", "/v1/certificates", json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    assert ctype.startswith("application/json")
    return status, json.loads(body)


def _nonce(url: str) -> bytes:
    status, _, body = _call(url, "GET", "/v1/nonce")
    assert status == 200
    return base64.b64decode(json.loads(body)["nonce"])


def _good_request(url: str, cvm: Cvm) -> dict:
    nonce = _nonce(url)
    return wire.encode_request(build_csr(cvm.key), nonce, [cvm.evidence(nonce)])


def _collector(cvm: Cvm):
    return lambda nonce: [cvm.evidence(nonce)]


# --- endpoints ------------------------------------------------------------------------------


def test_nonce_endpoint_hands_out_distinct_32_byte_nonces(server):
    status, ctype, body = _call(server, "GET", "/v1/nonce")
    doc = json.loads(body)
    assert status == 200 and ctype.startswith("application/json")
    assert set(doc) == {"nonce", "expires", "ttl"}
    first, second = base64.b64decode(doc["nonce"]), _nonce(server)
    assert len(first) == len(second) == binding.NONCE_LEN and first != second


def test_ca_pem_and_health(server, mock_ca):
    status, ctype, body = _call(server, "GET", "/v1/ca.pem")
    assert status == 200 and ctype == "application/x-pem-file"
    assert x509.load_pem_x509_certificate(body) == mock_ca.cert
    status, _, body = _call(server, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_enrollment_over_http_returns_a_chain_to_this_ca(server, mock_ca):
    cvm = Cvm.new()
    status, doc = _post(server, _good_request(server, cvm))
    assert status == 201
    chain = x509.load_pem_x509_certificates(doc["chain"].encode())
    assert chain[1] == mock_ca.cert
    assert x509.load_pem_x509_certificate(doc["certificate"].encode()) == chain[0]
    assert doc["serial"] == format(chain[0].serial_number, "x")


# --- refusals and robustness ----------------------------------------------------------------


def _bad_requests(url: str) -> list[tuple[str, int, str, tuple]]:
    """(label, expected status, expected error code, request) for a burst of bad requests."""
    cvm, thief = Cvm.new(), Cvm.new()
    replayed = _good_request(url, cvm)
    assert _post(url, replayed)[0] == 201
    stolen = _good_request(url, cvm)
    stolen["csr"] = build_csr(thief.key).decode()
    bad_sig = _good_request(url, cvm)
    pem_body = "".join(bad_sig["csr"].splitlines()[1:-1])
    der = bytearray(base64.b64decode(pem_body))
    der[-5] ^= 0x40
    bad_sig["csr"] = (
        "-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.b64encode(bytes(der)).decode()
        + "\n-----END CERTIFICATE REQUEST-----\n"
    )
    bad_b64 = _good_request(url, cvm)
    bad_b64["nonce"] = "not base64!"
    extra = _good_request(url, cvm)
    extra["admin"] = True
    json_h = {"Content-Type": "application/json"}
    post = "/v1/certificates"
    return [
        ("replayed nonce", 403, "nonce_replayed", ("POST", post, json.dumps(replayed).encode(), json_h)),
        ("another key", 403, "binding_mismatch", ("POST", post, json.dumps(stolen).encode(), json_h)),
        ("bad CSR signature", 400, "csr_invalid", ("POST", post, json.dumps(bad_sig).encode(), json_h)),
        ("bad base64", 400, "bad_request", ("POST", post, json.dumps(bad_b64).encode(), json_h)),
        ("unknown field", 400, "bad_request", ("POST", post, json.dumps(extra).encode(), json_h)),
        ("oversized", 413, "payload_too_large", ("POST", post, b"{" + b" " * (5 << 20) + b"}", json_h)),
        ("not JSON", 400, "bad_request", ("POST", post, b"\xff\xfe{", json_h)),
        ("deep JSON", 400, "bad_request", ("POST", post, b"[" * 100_000 + b"]" * 100_000, json_h)),
        ("JSON list", 400, "bad_request", ("POST", post, b"[]", json_h)),
        ("form body", 415, "unsupported_media_type", ("POST", post, b"a=b", {})),
        ("GET certificates", 405, "method_not_allowed", ("GET", post, None, {})),
        ("unknown path", 404, "not_found", ("GET", "/v1/../../etc/passwd", None, {})),
    ]


def test_burst_of_bad_requests_gets_json_reasons_and_the_server_stays_up(server, mock_ca):
    for label, status, code, (method, path, body, headers) in _bad_requests(server):
        got, ctype, raw = _call(server, method, path, body, headers)
        assert ctype.startswith("application/json"), label
        doc = json.loads(raw)
        assert (got, doc["error"]) == (status, code), (label, doc)
        assert doc["reason"] and "\n" not in doc["reason"] and "Traceback" not in doc["reason"], label
    with socket.create_connection((urlsplit(server).hostname, urlsplit(server).port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
        assert raw.recv(64).startswith(b"HTTP/1.")  # a 400, not a dropped server
    issued_before = mock_ca.issued_count
    status, _ = _post(server, _good_request(server, Cvm.new()))
    assert status == 201 and mock_ca.issued_count == issued_before + 1


def test_concurrent_enrollments_all_succeed_with_distinct_serials(server, mock_ca):
    results: list[object] = []

    def worker() -> None:
        try:
            cvm = Cvm.new()
            results.append(enroll(server, cvm.key, _collector(cvm), attempts=1).chain[0].serial_number)
        except Exception as exc:  # collected and reported below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(r, int) for r in results) and len(set(results)) == 8, results


# --- the loader's client --------------------------------------------------------------------


def test_enroll_checks_and_returns_the_chain(server, mock_ca):
    cvm = Cvm.new()
    enrollment = enroll(server, cvm.key, _collector(cvm), ca_cert=mock_ca.cert)
    assert enrollment.chain[1] == mock_ca.cert
    assert len(enrollment.chain_der()) == 2
    assert [e.type for e in enrollment.evidence] == ["mock"]


def test_enroll_rejects_a_ca_other_than_the_pinned_one(server, tmp_path):
    other = make_ca(tmp_path / "other", allow_mock=True)
    cvm = Cvm.new()
    with pytest.raises(EnrollmentError, match="does not chain"):
        enroll(server, cvm.key, _collector(cvm), ca_cert=other.cert)


def test_check_issued_rejects_a_certificate_for_another_key(server, mock_ca):
    import datetime as dt

    cvm, other = Cvm.new(), Cvm.new()
    enrollment = enroll(server, cvm.key, _collector(cvm))
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(EnrollmentError, match="different key"):
        check_issued(
            enrollment.chain,
            spki_der=other.spki,
            nonce=enrollment.nonce,
            ca_cert=None,
            at=dt.datetime.now(dt.UTC),
        )
    with pytest.raises(EnrollmentError, match="nonce"):
        check_issued(enrollment.chain, spki_der=cvm.spki, nonce=bytes(32), ca_cert=None, at=now)


def test_refusal_is_final_and_carries_the_cas_reason(tmp_path):
    strict = make_ca(tmp_path / "strict", allow_mock=False)
    slept: list[float] = []
    cvm = Cvm.new()
    with BackgroundServer(strict) as url, pytest.raises(EnrollmentRefused) as info:
        enroll(url, cvm.key, _collector(cvm), sleep=slept.append)
    assert info.value.code == "policy_refused"
    assert "'mock' is not allowed" in info.value.reason
    assert slept == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ca_is_retried_with_backoff_then_reported(tmp_path):
    slept: list[float] = []
    cvm = Cvm.new()
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(CaUnavailable, match="after 4 attempt"):
        enroll(url, cvm.key, _collector(cvm), attempts=4, backoff=0.5, sleep=slept.append, timeout=2)
    assert slept == [0.5, 1.0, 2.0]


def test_enrollment_succeeds_once_the_ca_comes_up(mock_ca):
    port = _free_port()
    servers: list[BackgroundServer] = []

    def start_ca(_delay: float) -> None:
        if not servers:
            servers.append(BackgroundServer(mock_ca, port=port))
            servers[0].__enter__()

    cvm = Cvm.new()
    try:
        enrollment = enroll(f"http://127.0.0.1:{port}", cvm.key, _collector(cvm), sleep=start_ca)
    finally:
        for s in servers:
            s.__exit__(None, None, None)
    assert enrollment.chain[1] == mock_ca.cert and len(servers) == 1


# --- the command line -----------------------------------------------------------------------


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "certs.ca.cli", *args],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def _serve(ca_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "certs.ca.cli",
            "ca",
            "serve",
            "--dir",
            str(ca_dir),
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("ca serve did not start")


def test_cli_init_then_serve_refuses_mock_without_allow_mock(tmp_path):
    ca_dir = tmp_path / "ca"
    done = _cli("ca", "init", "--dir", str(ca_dir))
    assert done.returncode == 0, done.stderr
    assert (ca_dir / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    again = _cli("ca", "init", "--dir", str(ca_dir), "--allow-mock")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    pin_hardware(ca_dir)
    proc, url = _serve(ca_dir)
    try:
        status, _, body = _call(url, "GET", "/v1/ca.pem")
        assert status == 200 and body == (ca_dir / "ca.pem").read_bytes()
        cvm = Cvm.new()
        with pytest.raises(EnrollmentRefused, match="mock"):
            enroll(url, cvm.key, _collector(cvm))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_cli_serve_reports_a_bad_listen_address(tmp_path):
    ca_dir = tmp_path / "ca"
    assert _cli("ca", "init", "--dir", str(ca_dir), "--allow-mock").returncode == 0
    done = _cli("ca", "serve", "--dir", str(ca_dir), "--listen", "nowhere")
    assert done.returncode == 2 and "HOST:PORT" in done.stderr
    done = _cli("ca", "serve", "--dir", str(tmp_path / "missing"), "--listen", "127.0.0.1:0")
    assert done.returncode == 2 and "cannot load the CA" in done.stderr
