"""Structured logging and its redaction layer; sd_notify framing."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.boot.notify import Notifier, socket_address
from loader.cli import logs


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    stream = io.StringIO()
    handler = logs.setup_logging(stream, choice="json")
    yield stream, logging.getLogger("trusted-loader.test")
    logging.getLogger().removeHandler(handler)
    logs.REDACTOR.forget_all()


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_auto_format_is_json_off_a_terminal_and_text_on_one() -> None:
    assert logs.wants_json(io.StringIO()) is True
    assert logs.wants_json(_Tty()) is False
    assert logs.wants_json(_Tty(), "json") is True
    with pytest.raises(ValueError, match="log format"):
        logs.wants_json(io.StringIO(), "yaml")


def test_json_record_carries_step_and_duration(capture) -> None:
    stream, log = capture
    log.info("%s done in %.3f s", "measurement", 1.5, extra={"step": "measurement", "seconds": 1.5})
    (record,) = _records(stream)
    assert record["msg"] == "measurement done in 1.500 s"
    assert (record["step"], record["seconds"], record["level"]) == ("measurement", 1.5, "info")
    assert record["ts"].endswith("Z")


def test_registered_secret_is_redacted_in_every_encoding(capture) -> None:
    stream, log = capture
    secret = b"\x01\x02account-key-material\xfe\xff"
    logs.register_secret(secret)
    log.error("key %s hex %s upper %s", "x", secret.hex(), secret.hex().upper())
    log.error("as text: %s", "account-key-material is not redacted alone")  # not registered alone
    log.warning("extra", extra={"detail": f"in an extra field: {secret.hex()}"})
    text = stream.getvalue()
    assert secret.hex() not in text and secret.hex().upper() not in text
    assert text.count(logs.REDACTED) == 3
    assert _records(stream)[2]["detail"] == f"in an extra field: {logs.REDACTED}"


def test_text_secret_and_pem_private_key_are_redacted(capture) -> None:
    stream, log = capture
    logs.register_secret("grant-token-0123456789")
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    body = pem.splitlines()[1]
    log.error("bad token grant-token-0123456789 and key %s", pem)
    text = stream.getvalue()
    assert "grant-token-0123456789" not in text and body not in text
    assert "PRIVATE KEY" not in text


def test_bytes_are_logged_as_their_length_only(capture) -> None:
    stream, log = capture
    content = b"patient,age\nP0001,42\n"
    log.info("read %s", content)
    log.info(content)  # type: ignore[arg-type]
    assert [r["msg"] for r in _records(stream)] == ["read <21 bytes>", "<21 bytes>"]


def test_messages_are_bounded(capture) -> None:
    stream, log = capture
    log.info("%s", "x" * 10_000)
    (record,) = _records(stream)
    assert len(record["msg"]) < logs.MAX_MESSAGE + 64
    assert record["msg"].endswith("(8000 more characters)")


def test_exception_becomes_one_line_field(capture) -> None:
    stream, log = capture
    try:
        raise ValueError("no such file /srv/x")
    except ValueError:
        log.exception("failed")
    (record,) = _records(stream)
    assert record["error"] == "ValueError: no such file /srv/x"
    assert "Traceback" not in stream.getvalue()


def test_text_mode_escapes_control_characters() -> None:
    stream = _Tty()
    handler = logs.setup_logging(stream)
    try:
        logging.getLogger("trusted-loader").warning("dataset %s", "a\nfake: line\x1b[31m")
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue() == "trusted-loader: warning: dataset a\\nfake: line\\x1b[31m\n"


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        logs.register_secret("abc")


@settings(max_examples=200, deadline=None)
@given(
    secret=st.binary(min_size=8, max_size=64),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    encoding=st.sampled_from(["hex", "HEX", "base64", "raw"]),
)
def test_property_a_registered_secret_never_survives(
    secret: bytes, before: str, after: str, encoding: str
) -> None:
    import base64

    redactor = logs.Redactor()
    redactor.register(secret)
    shown = {
        "hex": secret.hex(),
        "HEX": secret.hex().upper(),
        "base64": base64.b64encode(secret).decode().rstrip("="),
        "raw": secret.decode("utf-8", "replace"),
    }[encoding]
    out = redactor.scrub(before + shown + after)
    if encoding != "raw" or ("\ufffd" not in shown and len(shown.strip()) >= logs.MIN_SECRET):
        assert shown.strip() not in out


def test_notify_addresses() -> None:
    assert socket_address("@name") == b"\0name"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    for bad in (None, "", "@", "relative/path", "vsock:2:1234"):
        assert socket_address(bad) is None
    assert not Notifier.from_env({"NOTIFY_SOCKET": "relative"}).enabled
    assert not Notifier.from_env({}).send(status="x")


def test_notify_values_cannot_inject_assignments() -> None:
    name = f"trusted-loader-notify-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.status("measuring\nREADY=1\nMAINPID=1")
        assert receiver.recv(4096) == b"STATUS=measuring READY=1 MAINPID=1"
        assert notifier.status("x" * 5000)
        assert len(receiver.recv(8192)) == len("STATUS=") + 512
    finally:
        receiver.close()


def test_notify_failure_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(b"\0trusted-loader-nobody-listens-here")
    assert notifier.ready("x") is False
    assert notifier.status("y") is False
    assert sum("cannot notify" in r.getMessage() for r in caplog.records) == 1


def test_the_ca_logs_in_the_loaders_format(tmp_path: Path) -> None:
    """One log format for every component: `ca serve` off a terminal writes the loader's JSON
    lines (ts, level, logger, msg), not a format of its own."""
    import json as json_mod
    import urllib.error
    import urllib.request

    from tests.test_ca_loader import CaProcess, _loader

    assert _loader("ca", "init", "--dir", str(tmp_path / "ca"), "--allow-mock").returncode == 0
    server = CaProcess(tmp_path / "ca")
    try:
        request = urllib.request.Request(
            server.url + "/v1/certificates",
            data=b'{"csr": "x", "nonce": "x", "evidence": []}',
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)
    finally:
        server.stop()
    assert server.proc.stderr is not None
    records = [
        json_mod.loads(line) for line in server.proc.stderr.read().splitlines() if line.startswith("{")
    ]
    refused = [r for r in records if r["logger"].startswith("certs.") and r["msg"].startswith("refused")]
    assert refused, records
    assert set(refused[0]) >= {"ts", "level", "logger", "msg"} and refused[0]["level"] == "info"
