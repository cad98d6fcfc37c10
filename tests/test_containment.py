"""Issue 13: a hostile engine can neither reach the loader nor speak for the hardware.

Run as root (as CI does): real uid switches (uid 64123, no passwd entry), real namespaces. The
hostile engine (tests/hostile_engine.py) tries every attack; each must fail, and the job must
still end with a signed report that verifies and whose output digest matches the output.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from loader.boot import boot
from loader.config import load_config
from loader.digest import digest_path
from loader.report import parse_report
from loader.verify import verify_report
from tests.ops_helpers import make_job

ENGINE = Path(__file__).with_name("hostile_engine.py")
UID = 64123
pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="containment tests switch uids: run as root")


def _hostile_job(tmp_path: Path, *, isolation: str = "namespaces", linger: float = 0.0) -> dict:
    job = make_job(tmp_path / "job", engine_source=ENGINE.read_text())
    tee = job.workdir / "tee"
    for name in ("sys/kernel/config/tsm/report", "dev"):
        (tee / name).mkdir(parents=True, exist_ok=True)
    (tee / "dev" / "tdx_guest").write_bytes(b"")
    key = job.workdir / "chain-account.key"
    key.write_text("0x" + "11" * 32 + "\n")
    key.chmod(0o600)
    listener = socket.create_server(("127.0.0.1", 0))
    targets = {
        "loader_pid": os.getpid(),
        "key": str(key),
        "config": str(job.config),
        "spool": str(job.workdir / "spool"),
        "tsm": str(tee / "sys/kernel/config/tsm/report"),
        "tee_device": str(tee / "dev" / "tdx_guest"),
        "rtmr3": str(tee / "dev" / "mock-tee" / "rtmr3"),
        "port": listener.getsockname()[1],
        "linger": linger,
        "report_out": str(job.workdir / "report.cbor"),
    }
    text = job.config.read_text()
    text = text.replace('"{engine}"]', f'"{{engine}}", {json.dumps(json.dumps(targets))}]')
    text = text.replace("uid = 65534\ngid = 65534", f"uid = {UID}\ngid = {UID}")
    if isolation == "none":
        text = text.replace("timeout = 120", 'timeout = 120\nisolation = "none"')
    job.config.write_text(text)
    return {"job": job, "targets": targets, "listener": listener, "tee": tee}


def _run(setup: dict) -> tuple[object, dict, Path]:
    job = setup["job"]
    report_out = Path(setup["targets"]["report_out"])
    outcome = boot(load_config(job.config), report_out=report_out)
    assert outcome.output_dir is not None
    attempts = json.loads((outcome.output_dir / "output" / "attempts.json").read_text())
    return outcome, attempts, report_out


def test_every_attack_of_a_hostile_engine_fails_and_the_report_stands(tmp_path: Path) -> None:
    setup = _hostile_job(tmp_path, linger=1.0)
    outcome, attempts, report_out = _run(setup)
    assert outcome.exit_code == 0, outcome.reasons
    succeeded = {k: v for k, v in attempts.items() if v == "SUCCEEDED"}
    assert not succeeded, succeeded
    for name in ("loader_mem", "account_key", "configuration", "tsm_entry", "tee_device", "rtmr3", "network"):
        assert attempts[name].startswith("denied"), (name, attempts[name])
    assert attempts["uid"] == UID
    assert attempts["pids"] == [1, 2] or len(attempts["pids"]) <= 3, attempts["pids"]  # init, engine
    status = attempts["status"]
    assert all(status[k] == "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert status["NoNewPrivs"] == "1"
    time.sleep(1.5)  # the grandchild would have struck by now
    output = outcome.output_dir / "output"
    assert (output / "result.txt").read_text() == "the engine's honest result\n"
    assert report_out.read_bytes() == outcome.report and outcome.spool_path.read_bytes() == outcome.report
    payload = parse_report(outcome.report).payload
    assert payload["workload"]["output"]["digest"] == digest_path(output).digest
    rtmr3 = (setup["tee"] / "dev" / "mock-tee" / "rtmr3").read_bytes()
    from attestation import rtmr

    assert rtmr3 == rtmr.replay([e["value"] for e in payload["events"]])  # nothing but the loader's
    record = payload["containment"]
    assert record["isolation"] == "namespaces" and record["uid"] == UID and record["network"] == "none"
    assert set(record["namespaces"]) == {"pid", "mount", "ipc", "uts", "net"}
    result = verify_report(outcome.report, allow_mock=True)
    assert result.ok, result.reason()


def test_uncontained_engine_reaches_everything_and_verify_refuses_it(tmp_path: Path) -> None:
    """The control: with isolation = "none" the same probes succeed, so they can fail above."""
    setup = _hostile_job(tmp_path, isolation="none")
    outcome, attempts, _ = _run(setup)
    assert outcome.exit_code == 0, outcome.reasons
    for name in ("account_key", "configuration", "tsm_entry", "tee_device", "rtmr3", "network"):
        assert attempts[name] == "SUCCEEDED", (name, attempts[name])
    assert parse_report(outcome.report).payload["containment"]["isolation"] == "none"
    refused = verify_report(outcome.report, allow_mock=True)
    assert not refused.ok and refused.reason().startswith("containment: isolation 'none'")
    # The engine extended the mock RTMR3 after the loader's boundary: the record shows it.
    accepted = verify_report(outcome.report, allow_mock=True, allow_no_isolation=True)
    assert accepted.ok, accepted.reason()
