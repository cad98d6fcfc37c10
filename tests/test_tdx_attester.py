"""The TDX attester against a fake kernel (configfs-tsm + RTMR sysfs), and RTMR replay."""

from __future__ import annotations

import hashlib

import pytest

from attestation import attester_for, rtmr
from attestation.errors import AttesterFailure, AttesterUnavailable
from attestation.tdx import quote
from attestation.tdx.attester import MEASUREMENTS_DIR, TdxAttester
from tests.tdx_helpers import NOW, ROOT, FakeTdxKernel, check, failed, quote_bytes, verify


def test_collect_round_trip_binds_on_report_data_only():
    """The fake returns a real Intel-signed quote: everything verifies except the fresh binding."""
    real = quote_bytes("trustee_6")
    kernel = FakeTdxKernel(real)
    wanted = hashlib.sha512(b"binding").digest()
    evidence = TdxAttester(root=ROOT, ops=kernel).collect(wanted)
    assert evidence.type == "tdx" and evidence.data == real
    assert set(kernel.inblobs) == {wanted} and kernel.entries == {}
    result = verify(evidence.data, NOW, expected=wanted)
    assert failed(result) == {"report_data"}
    assert check(result, "quote_signature") and check(result, "pck_chain")


def test_collect_refuses_bad_report_data_and_garbage_quotes():
    kernel = FakeTdxKernel(quote_bytes("trustee_6"))
    with pytest.raises(AttesterFailure, match="64 bytes"):
        TdxAttester(root=ROOT, ops=kernel).collect(b"short")
    with pytest.raises(AttesterFailure, match="unusable quote"):
        TdxAttester(root=ROOT, ops=FakeTdxKernel(b"not a quote")).collect(bytes(64))


def test_collect_without_configfs_is_unavailable(tmp_path):
    with pytest.raises(AttesterUnavailable):
        TdxAttester(root=tmp_path).collect(bytes(64))


def test_extend_and_replay_agree():
    kernel = FakeTdxKernel(quote_bytes("trustee_6"))
    attester = attester_for("tdx", root=ROOT, ops=kernel)
    events = ["engine:sha256:" + "ab" * 32, "dataset:train:sha256:" + "cd" * 32, "config:sha256:" + "ef" * 32]
    values = [rtmr.event_value(e) for e in events]
    for event, value in zip(events, values, strict=True):
        attester.extend(value, event)
    assert isinstance(attester, TdxAttester)
    assert attester.read_rtmr(3) == rtmr.replay(values) != bytes(48)
    assert attester.read_rtmr(2) == bytes(48)
    assert rtmr.replay(values[::-1]) != rtmr.replay(values)


def test_extend_checks_length_and_missing_sysfs(tmp_path):
    with pytest.raises(AttesterFailure, match="48 bytes"):
        TdxAttester(root=ROOT, ops=FakeTdxKernel(b"")).extend(bytes(32), "engine")
    with pytest.raises(AttesterUnavailable, match="not found"):
        TdxAttester(root=tmp_path).extend(bytes(48), "engine")
    assert not (tmp_path / MEASUREMENTS_DIR).exists()


def test_extend_on_a_real_file_tree_writes_48_bytes(tmp_path):
    """With the real OS operations: the write goes to rtmr3:sha384 as one 48-byte write."""
    target = tmp_path / MEASUREMENTS_DIR / "rtmr3:sha384"
    target.parent.mkdir(parents=True)
    target.write_bytes(bytes(48))
    TdxAttester(root=tmp_path).extend(b"\x11" * 48, "engine")
    assert target.read_bytes() == b"\x11" * 48
    assert TdxAttester(root=tmp_path).read_rtmr(3) == b"\x11" * 48


def test_only_rtmr2_and_rtmr3_are_extendable():
    with pytest.raises(AttesterFailure, match="rtmr must be one of"):
        TdxAttester(root=ROOT, rtmr=1)


def test_replay_matches_known_sha384_chain():
    v = b"\x01" * 48
    assert rtmr.replay([]) == bytes(48)
    assert rtmr.replay([v]) == hashlib.sha384(bytes(48) + v).digest()
    with pytest.raises(ValueError, match="48 bytes"):
        rtmr.replay([b"\x01" * 32])


def test_replayed_zero_log_matches_real_quote_rtmr3():
    assert quote.parse(quote_bytes("go_v4")).body.rtmr3 == rtmr.replay([])
