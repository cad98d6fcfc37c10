from pathlib import Path

import pytest

from attestation import tsm
from attestation.errors import AttesterFailure, AttesterUnavailable
from tests.fake_tsm import FakeTsmKernel


def echo_quote(inblob: bytes, privlevel: int | None) -> tuple[bytes, bytes]:
    return b"QUOTE:" + inblob + bytes([privlevel or 0]), b"AUX"


def kernel(**kw) -> FakeTsmKernel:
    return FakeTsmKernel(root=Path("/fake"), provider="tdx_guest", quote=echo_quote, **kw)


def test_report_round_trip_and_entry_removed():
    k = kernel()
    rep = tsm.get_report(Path("/fake"), b"\x07" * 64, expected_provider="tdx_guest", ops=k)
    assert rep.outblob == b"QUOTE:" + b"\x07" * 64 + b"\x00"
    assert rep.auxblob == b"AUX"
    assert rep.provider == "tdx_guest"
    assert k.entries == {}


def test_privlevel_is_written_before_inblob():
    k = kernel()
    rep = tsm.get_report(Path("/fake"), b"x", expected_provider="tdx_guest", privlevel=2, ops=k)
    assert rep.outblob.endswith(b"\x02")
    assert rep.generation == 2


def test_generation_race_is_retried_then_succeeds():
    k = kernel(races=1)
    rep = tsm.get_report(Path("/fake"), b"n", expected_provider="tdx_guest", ops=k)
    assert rep.outblob.startswith(b"QUOTE:n")
    assert k.created == 2
    assert k.entries == {}


def test_persistent_race_fails_closed():
    k = kernel(races=10)
    with pytest.raises(AttesterFailure, match="another writer"):
        tsm.get_report(Path("/fake"), b"n", expected_provider="tdx_guest", ops=k)
    assert k.entries == {}


def test_empty_outblob_is_an_error():
    k = kernel(service_down=True)
    with pytest.raises(AttesterFailure, match="outblob is empty"):
        tsm.get_report(Path("/fake"), b"n", expected_provider="tdx_guest", ops=k)


def test_wrong_provider_is_unavailable():
    k = kernel()
    with pytest.raises(AttesterUnavailable, match="expected 'sev_guest'"):
        tsm.get_report(Path("/fake"), b"n", expected_provider="sev_guest", ops=k)


def test_oversized_inblob_refused():
    with pytest.raises(AttesterFailure, match="at most 64"):
        tsm.get_report(Path("/fake"), b"n" * 65, expected_provider="tdx_guest", ops=kernel())


def test_missing_configfs_is_unavailable(tmp_path):
    with pytest.raises(AttesterUnavailable, match="not found"):
        tsm.get_report(tmp_path, b"n", expected_provider="tdx_guest")


def test_probe_provider():
    assert tsm.probe_provider(Path("/fake"), ops=kernel()) == "tdx_guest"
    assert tsm.probe_provider(Path("/nonexistent-root")) is None
