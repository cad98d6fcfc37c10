"""Any single changed byte, and any truncation, of a real signed report is rejected."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.conftest import cli


def test_untampered_report_verifies(demo_report: tuple[Path, bytes]) -> None:
    _, raw = demo_report
    assert verify_report(raw, allow_mock=True, appraisal=MOCK).ok


def test_every_single_byte_flip_is_rejected(demo_report: tuple[Path, bytes]) -> None:
    _, raw = demo_report
    accepted = []
    for pos in range(len(raw)):
        tampered = bytearray(raw)
        tampered[pos] ^= 0x01
        if verify_report(bytes(tampered), allow_mock=True, appraisal=MOCK).ok:
            accepted.append(pos)
    assert accepted == [], f"tampered reports accepted at byte positions {accepted[:10]}"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_byte_value_change_is_rejected(demo_report: tuple[Path, bytes], data: st.DataObject) -> None:
    _, raw = demo_report
    pos = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[pos]))
    tampered = raw[:pos] + bytes([value]) + raw[pos + 1 :]
    assert not verify_report(tampered, allow_mock=True, appraisal=MOCK).ok


def test_every_truncation_is_rejected(demo_report: tuple[Path, bytes]) -> None:
    _, raw = demo_report
    for cut in range(len(raw)):
        assert not verify_report(raw[:cut], allow_mock=True, appraisal=MOCK).ok, cut
    assert not verify_report(raw + b"\x00", allow_mock=True, appraisal=MOCK).ok


def test_cli_rejects_tampered_and_truncated_with_one_line(
    tmp_path: Path, demo_report: tuple[Path, bytes]
) -> None:
    _, raw = demo_report
    cases = {
        "flipped": raw[:200] + bytes([raw[200] ^ 0x80]) + raw[201:],
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "garbage": b"\xff" * 64,
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name}.cbor"
        path.write_bytes(blob)
        res = cli("report", "verify", path, "--allow-mock", "--any-image")
        assert res.returncode == 1, (name, res.stderr)
        assert "Traceback" not in res.stderr
        assert res.stdout.splitlines()[-1].startswith(f"{path}: NOT verified")
        shown = cli("report", "show", path)
        assert shown.returncode == 1 and "Traceback" not in shown.stderr
        assert len(shown.stderr.strip().splitlines()) == 1
