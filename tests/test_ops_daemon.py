"""The daemon as systemd runs it: NOTIFY_SOCKET, READY=1, STATUS per step, JSON logs, exit code."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ops_helpers import REPO, approve_configured_run, loader_env, make_job, run_daemon

STEPS = ["attestation", "certificate", "policy", "measurement", "extend", "decision", "wipe", "sign", "store"]


def _json_lines(stderr: str) -> list[dict[str, object]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "the daemon logged nothing"
    return [json.loads(line) for line in lines]  # every line is one JSON object


def _statuses(run) -> list[str]:
    return [m["STATUS"] for m in run.messages if "STATUS" in m]


@pytest.mark.parametrize("abstract", [True, False], ids=["abstract-socket", "path-socket"])
def test_successful_job_notifies_ready_status_and_end(tmp_path: Path, abstract: bool) -> None:
    job = make_job(tmp_path / "job")
    run = run_daemon(["run", "--config", str(job.config)], abstract=abstract)
    assert run.returncode == 0, run.stderr

    ready = [i for i, m in enumerate(run.messages) if m.get("READY") == "1"]
    assert len(ready) == 1
    assert run.messages[ready[0]]["MAINPID"].isdigit()
    statuses = _statuses(run)
    for expected in ("attesting", "measuring 1/4 inputs", "measuring 4/4 inputs", "running workload"):
        assert expected in statuses
    # READY comes before every step status, and the end comes last.
    first_step = next(i for i, m in enumerate(run.messages) if m.get("STATUS") == "attesting")
    assert ready[0] < first_step
    assert run.messages[-1] == {"STOPPING": "1", "STATUS": "done verdict=run exit=0"}

    logs = _json_lines(run.stderr)
    steps = {r["step"]: r["seconds"] for r in logs if "step" in r}
    assert {*STEPS, "workload"} <= set(steps)
    assert all(isinstance(s, float) and s >= 0 for s in steps.values())
    assert {"ts", "level", "logger", "msg"} <= set(logs[0])
    final = logs[-1]
    assert final["verdict"] == "run" and final["exit_code"] == 0
    assert Path(str(final["report"])).is_file()


def test_no_dataset_content_reaches_logs_or_notifications(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=True)
    run = run_daemon(["run", "--config", str(job.config)])
    assert run.returncode == 0, run.stderr
    # The engine printed every dataset byte: it is in the engine's own log files ...
    run_dirs = list((job.workdir / "output").iterdir())
    assert len(run_dirs) == 1
    assert job.canary in (run_dirs[0] / "logs" / "stdout.log").read_text()
    assert (run_dirs[0] / "output" / "env.txt").read_text() == "unset"  # no notify socket for it
    # ... and nowhere the loader writes its logs or talks to the service manager.
    for stream in (run.stdout, run.stderr, b"".join(run.raw_messages).decode()):
        assert job.canary not in stream


def test_workload_failure_ends_the_unit_with_its_exit_code(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", engine_exit=7)
    run = run_daemon(["run", "--config", str(job.config)])
    assert run.returncode == 5
    assert run.messages[-1]["STATUS"] == "done verdict=run exit=5"
    assert job.canary not in run.stderr


def test_aborted_job_reports_abort_and_exits_3(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job")
    lab = next((job.workdir / "inputs" / "datasets" / "lab").glob("*.csv"))
    lab.write_text(lab.read_text() + "tampered\n")
    run = run_daemon(["run", "--config", str(job.config)])
    assert run.returncode == 3
    assert "running workload" not in _statuses(run)
    assert run.messages[-1]["STATUS"] == "done verdict=abort exit=3"
    logs = _json_lines(run.stderr)
    assert any(r["level"] == "warning" and "ABORTED" in str(r["msg"]) for r in logs)
    assert len(list((job.workdir / "spool").glob("*.cbor"))) == 1
    assert job.canary not in run.stderr


def test_wrong_config_key_fails_before_ready_with_one_line(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job")
    job.config.write_text(job.config.read_text().replace("timeout = 120", "timout = 120"))
    run = run_daemon(["run", "--config", str(job.config)])
    assert run.returncode == 2
    assert not any(m.get("READY") == "1" for m in run.messages)
    assert [m.get("STATUS") for m in run.messages] == ["invalid configuration"]
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"error: {job.config.resolve()}: run.timout: unknown key")
    assert not (job.workdir / "spool").exists()


def test_text_logs_on_request(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    run = run_daemon(["run", "--config", str(job.config), "--log-format", "text"])
    assert run.returncode == 0
    lines = run.stderr.splitlines()
    assert all(line.startswith("trusted-loader: ") for line in lines)
    assert any(line.startswith("trusted-loader: measurement done in ") for line in lines)


SLEEPY_ENGINE = """#!/usr/bin/env python3
import os, pathlib, time
pathlib.Path(os.environ["TL_OUTPUT"], "started").write_text(str(os.getpid()))
time.sleep(60)
"""


def _marked(token: str) -> list[int]:
    """Host PIDs of the processes whose environment holds MARKER=token (the contained engine's
    own PID is namespace-local, so it is found this way)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if f"MARKER={token}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def test_sigterm_stops_the_workload_and_wipes_staging(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", engine_source=SLEEPY_ENGINE)
    token = secrets.token_hex(8)
    text = job.config.read_text().replace("timeout = 120", f'timeout = 120\nenv = {{MARKER = "{token}"}}')
    job.config.write_text(text)
    approve_configured_run(job.config)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loader", "run", "--config", str(job.config)],
        cwd=REPO,
        env=loader_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not list((job.workdir / "staging").glob("*/output/started")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marked(token), "the engine never started"
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    (record,) = [json.loads(line) for line in err.decode().splitlines() if "SIGTERM" in line]
    assert record["msg"].startswith("stopped by signal SIGTERM; workload stopped, staged inputs wiped")
    assert record["exit_code"] == 143
    assert _marked(token) == []
    assert not any((job.workdir / "staging").iterdir())
