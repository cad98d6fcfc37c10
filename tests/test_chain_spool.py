"""The spool ledger, delivery with retry, the key file, the subject and the [publish] config.

None of these need web3: they use the file sink and scripted sinks.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.boot.config import load_config
from loader.errors import ConfigError, PublishError
from loader.publish.backoff import Backoff
from loader.publish.deliver import Delivery
from loader.publish.keyfile import OperatorKey, read_account_key
from loader.publish.ledger import DeliveryRecord, Ledger
from loader.publish.sinks import DeliveryError, FileSink
from loader.publish.spool import spool_report
from loader.publish.subject import SUBJECT_TAG, report_subject, subject_for
from tests.chain_helpers import REPO, demo_job, make_report

KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_report(tmp_path_factory.mktemp("job") / "demo")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class ScriptedSink:
    """Fails with the scripted errors first, then succeeds; counts calls per report."""

    id: str = "scripted"
    label: str = "scripted sink"
    failures: list[DeliveryError] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)

    def deliver(self, report: bytes, record: DeliveryRecord, *, save_intent: Any, deadline: float) -> dict:
        digest = hashlib.sha256(report).hexdigest()
        self.calls.append(digest)
        if self.failures:
            raise self.failures.pop(0)
        already = digest in self.held
        self.held.add(digest)
        return {"already": already}

    def close(self) -> None:
        pass


def spool_with(tmp_path: Path, *reports: bytes) -> Ledger:
    spool = tmp_path / "spool"
    for i, data in enumerate(reports):
        path = spool_report(spool, data)
        os.utime(path, ns=(i * 10**9, i * 10**9))
    return Ledger(spool)


# --- ledger ------------------------------------------------------------------------------------


def test_entries_are_reports_only_oldest_first(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"second-" * 3, b"first-" * 3)
    (ledger.spool_dir / "notes.txt").write_text("x")
    (ledger.spool_dir / ("ab" * 32 + ".scripted.json")).write_text("{}")
    entries = ledger.entries()
    assert [e.hex for e in entries] == [
        hashlib.sha256(b"second-" * 3).hexdigest(),
        hashlib.sha256(b"first-" * 3).hexdigest(),
    ]
    assert entries[0].read() == b"second-" * 3


def test_corrupted_spool_entry_is_refused_and_not_delivered(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"report bytes")
    entry = ledger.entries()[0]
    entry.path.write_bytes(b"report bytez")
    with pytest.raises(PublishError, match="corrupt"):
        entry.read()
    sink = ScriptedSink()
    clock = FakeClock()
    outcomes = Delivery(ledger, [sink], clock=clock.clock, sleep=clock.sleep).run(30)
    assert sink.calls == []
    assert not outcomes[0].delivered and "corrupt" in outcomes[0].detail
    assert clock.sleeps == []  # permanent: no retry loop


def test_record_round_trip_and_unreadable_record_counts_as_pending(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"r1")
    entry = ledger.entries()[0]
    written = ledger.write(
        entry, DeliveryRecord("scripted", entry.digest, state="delivered", receipt={"a": 1})
    )
    assert ledger.record(entry, "scripted") == written
    assert ledger.pending("scripted") == []
    path = ledger.spool_dir / f"{entry.hex}.scripted.json"
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not json")
    assert [e.hex for e, _ in ledger.pending("scripted")] == [entry.hex]
    doc = written.to_json() | {"digest": "sha256:" + "00" * 32}
    path.write_text(json.dumps(doc))
    assert not ledger.record(entry, "scripted").delivered


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    )
)
def test_record_parser_rejects_any_foreign_json(doc: Any) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        DeliveryRecord.from_json(doc)


@pytest.mark.parametrize("sink_id", ["", "UPPER", "../x", "a/b", "a.b", "x" * 97])
def test_sink_ids_cannot_escape_the_spool(tmp_path: Path, sink_id: str) -> None:
    ledger = spool_with(tmp_path, b"r")
    with pytest.raises(ValueError, match="sink id"):
        ledger.record(ledger.entries()[0], sink_id)


def test_lock_excludes_a_second_publisher(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"r")
    code = (
        "import sys; from pathlib import Path; from loader.publish.ledger import Ledger\n"
        "with Ledger(Path(sys.argv[1])).lock(5): print('locked', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(ledger.spool_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PublishError, match="another publisher"), ledger.lock(0.3):
            pass
    finally:
        holder.communicate("", timeout=10)
    with ledger.lock(1):
        pass


# --- delivery ----------------------------------------------------------------------------------


def test_file_sink_delivers_once_and_is_idempotent(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"alpha", b"beta")
    sink = FileSink(tmp_path / "outbox")
    first = Delivery(ledger, [sink]).run(5)
    assert [o.delivered for o in first] == [True, True]
    assert {p.read_bytes() for p in (tmp_path / "outbox").iterdir()} == {b"alpha", b"beta"}
    for entry in ledger.entries():
        ledger.write(entry, DeliveryRecord(sink.id, entry.digest))  # forget: only the outbox knows
    again = Delivery(ledger, [sink]).run(5)
    assert all(o.delivered and o.receipt["already"] for o in again)


def test_unavailable_sink_is_retried_with_growing_backoff_until_delivered(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"one", b"two")
    down = DeliveryError("node unreachable", unavailable=True)
    sink = ScriptedSink(failures=[down, down, down])
    clock = FakeClock()
    outcomes = Delivery(ledger, [sink], clock=clock.clock, sleep=clock.sleep).run(60)
    assert all(o.delivered for o in outcomes)
    assert len(clock.sleeps) == 3
    assert clock.sleeps == sorted(clock.sleeps) and clock.sleeps[0] < clock.sleeps[-1]
    # an unreachable sink is not asked for its other reports in the same round
    first = hashlib.sha256(b"one").hexdigest()
    assert sink.calls[:3] == [first, first, first]
    assert ledger.record(ledger.entries()[0], "scripted").attempts == 3


def test_timeout_leaves_reports_pending_with_the_error_and_next_attempt(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"one")
    sink = ScriptedSink(failures=[DeliveryError("node unreachable", unavailable=True)] * 100)
    clock = FakeClock()
    outcomes = Delivery(ledger, [sink], clock=clock.clock, sleep=clock.sleep).run(10)
    assert [o.delivered for o in outcomes] == [False]
    assert clock.now <= 10
    record = ledger.record(ledger.entries()[0], "scripted")
    assert record.state == "pending" and record.attempts == len(sink.calls) > 1
    assert record.last_error == "node unreachable" and record.next_attempt > 0


def test_permanent_failure_is_not_retried_in_process(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"one")
    sink = ScriptedSink(failures=[DeliveryError("not a ReportRegistry", permanent=True)])
    clock = FakeClock()
    outcomes = Delivery(ledger, [sink], clock=clock.clock, sleep=clock.sleep).run(60)
    assert not outcomes[0].delivered and sink.calls == [hashlib.sha256(b"one").hexdigest()]
    assert clock.sleeps == []


def test_persisted_backoff_is_honoured_when_asked_and_survives_a_restart(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"one")
    clock = FakeClock()
    Delivery(ledger, [ScriptedSink(failures=[DeliveryError("x", permanent=True)])], clock=clock.clock).run(5)
    restarted = Ledger(ledger.spool_dir)
    sink = ScriptedSink()
    waiting = Delivery(restarted, [sink], respect_schedule=True).run(5)
    assert sink.calls == [] and not waiting[0].delivered
    forced = Delivery(restarted, [sink]).run(5)
    assert forced[0].delivered and len(sink.calls) == 1


def test_only_limits_delivery_to_the_named_reports(tmp_path: Path) -> None:
    ledger = spool_with(tmp_path, b"one", b"two")
    sink = ScriptedSink()
    target = hashlib.sha256(b"two").hexdigest()
    outcomes = Delivery(ledger, [sink], only={target}).run(5)
    assert sink.calls == [target] and [o.digest for o in outcomes] == [f"sha256:{target}"]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10_000))
def test_backoff_grows_then_stays_within_the_cap(attempts: int) -> None:
    import random

    policy = Backoff(base=2, factor=2, cap=900, jitter=0.25)
    rng = random.Random(attempts)
    delay = policy.delay(attempts, rng)
    ideal = min(900, 2 * 2 ** (attempts - 1)) if attempts < 64 else 900
    assert 0.75 * ideal <= delay <= ideal


# --- key file --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [KEY_HEX, "0x" + KEY_HEX, "  0x" + KEY_HEX.upper() + "\n"])
def test_key_file_accepts_hex_with_or_without_prefix(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    path.chmod(0o600)
    key = read_account_key(path)
    assert key.secret() == bytes.fromhex(KEY_HEX)
    assert KEY_HEX not in repr(key) and KEY_HEX not in str(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    path.write_text(KEY_HEX)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"expected mode 0600 or stricter, found {mode:04o}") as info:
        read_account_key(path)
    assert KEY_HEX not in str(info.value)


@pytest.mark.parametrize(
    "text", [KEY_HEX[:-1], KEY_HEX + "00", "0x", "", "zz" * 32, "00" * 32, "f" * 64, KEY_HEX + "\n" + KEY_HEX]
)
def test_malformed_key_is_refused_without_echoing_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="account key file") as info:
        read_account_key(path)
    assert len(text) < 16 or text.strip()[:16] not in str(info.value)


def test_key_file_must_be_a_regular_file_not_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text(KEY_HEX)
    real.chmod(0o600)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="cannot open"):
        read_account_key(tmp_path / "link")
    with pytest.raises(ConfigError, match="regular file"):
        read_account_key(tmp_path)


def test_operator_key_repr_is_redacted() -> None:
    key = OperatorKey(bytes.fromhex(KEY_HEX))
    assert "redacted" in f"{key!r} {key}" and KEY_HEX not in f"{key!r}{key}"


# --- subject -----------------------------------------------------------------------------------


def test_subject_is_the_tagged_hash_of_the_order(report: bytes) -> None:
    assert SUBJECT_TAG == b"trusted-loader/subject/v1\x00"
    assert subject_for("demo-order-1") == hashlib.sha256(SUBJECT_TAG + b"demo-order-1").digest()
    assert report_subject(report) == subject_for("demo-order-1")
    assert subject_for("demo-order-1") != subject_for("demo-order-2")


def test_subject_of_something_that_is_not_a_report_is_an_error() -> None:
    from loader.errors import ReportError

    with pytest.raises(ReportError):
        report_subject(b"\xa0")


# --- config --------------------------------------------------------------------------------------


def _config_with(tmp_path: Path, extra: str) -> Path:
    config = demo_job(tmp_path / "demo")
    config.write_text(config.read_text() + extra)
    return config


def test_publish_section_is_parsed_with_relative_key_path(tmp_path: Path) -> None:
    cfg = load_config(
        _config_with(
            tmp_path,
            "\n[publish.evm]\n"
            'rpc_url = "http://127.0.0.1:8545"\n'
            'contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"\n'
            'account_key_file = "operator.key"\nchain_id = 31337\ntimeout = 5\n'
            '[publish.file]\ndir = "outbox"\n',
        )
    )
    assert cfg.publish.evm is not None and cfg.publish.enabled
    assert cfg.publish.evm.account_key_file == (tmp_path / "demo" / "operator.key").resolve()
    assert cfg.publish.evm.chain_id == 31337 and cfg.publish.timeout == 5.0
    assert cfg.publish.file_dir == (tmp_path / "demo" / "outbox").resolve()


def test_no_publish_section_means_publishing_is_off(tmp_path: Path) -> None:
    assert not load_config(_config_with(tmp_path, "")).publish.enabled


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '\n[publish.evm]\nrpc_url = "http://x"\ncontract = "0x00"\n'
            'account_key_file = "k"\nkey = "secret"\n',
            "publish.evm.key: unknown key",
        ),
        ('\n[publish.evm]\nrpc_url = "http://x"\naccount_key_file = "k"\n', "publish.evm.contract: missing"),
        (
            '\n[publish.evm]\nrpc_url = "http://x"\ncontract = "0x00"\naccount_key_file = "k"\ntimeout = 0\n',
            "publish.evm.timeout",
        ),
        ('\n[publish.sms]\nto = "x"\n', "publish.sms: unknown key"),
    ],
)
def test_publish_section_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config_with(tmp_path, extra))


def test_run_without_publishing_does_not_import_web3(tmp_path: Path) -> None:
    config = demo_job(tmp_path / "demo")
    code = (
        "import sys\nfrom loader.cli.commands import main\n"
        f"rc = main(['run', '--config', {str(config)!r}])\n"
        "top = ('web3', 'eth_account', 'eth_tester', 'eth')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in top)\n"
        "print(rc, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.stdout.strip() == "0 []", done.stderr
