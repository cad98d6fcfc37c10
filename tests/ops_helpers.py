"""Helpers for the operations tests: a job directory with a canary, the daemon as a subprocess."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loader.cli import demo

REPO = Path(__file__).resolve().parents[1]

# An engine that tries its hardest to leak: it prints every dataset byte to its stdout and
# stderr. The loader must keep those streams out of its own logs and notifications.
LEAKY_ENGINE = """#!/usr/bin/env python3
import os, pathlib, sys
for path in sorted(pathlib.Path(os.environ["TL_DATASETS"]).rglob("*")):
    if path.is_file():
        data = path.read_text()
        sys.stdout.write(data)
        sys.stderr.write(data)
(pathlib.Path(os.environ["TL_OUTPUT"]) / "env.txt").write_text(os.environ.get("NOTIFY_SOCKET", "unset"))
sys.exit(int(os.environ.get("ENGINE_EXIT", "0")))
"""


@dataclass(frozen=True)
class Job:
    workdir: Path
    config: Path
    canary: str


def make_job(
    workdir: Path, *, leaky: bool = True, engine_exit: int = 0, engine_source: str | None = None
) -> Job:
    """A demo job whose lab dataset holds a unique canary line; the approved list matches it."""
    canary = "CANARY-" + secrets.token_hex(16)
    demo.prepare_workdir(workdir)
    paths = demo.write_inputs(workdir)
    with open(next(paths["dataset:lab"].glob("*.csv")), "a", encoding="utf-8") as f:
        f.write(f"{canary},40,5.5,3.1\n")
    if leaky or engine_source:
        paths["engine"].write_text(engine_source or LEAKY_ENGINE)
    env = {"ENGINE_EXIT": str(engine_exit)} if engine_exit else {}
    demo.write_policy(workdir, paths, run=demo.demo_run(env=env))
    config = demo.write_config(workdir, None)
    if engine_exit:
        env_line = f'env = {{ENGINE_EXIT = "{engine_exit}"}}'
        config.write_text(config.read_text().replace("timeout = 120", f"timeout = 120\n{env_line}"))
    return Job(workdir, config, canary)


def approve_configured_run(config: Path) -> None:
    """Make the approved list beside `config` consent to exactly the [run] it configures: for
    tests whose subject is not consent but an engine with its own command line or timeout."""
    import json

    from loader.boot.config import load_config

    run = load_config(config).run
    path = config.parent / "approved.json"
    policy = json.loads(path.read_text())
    policy["run"].update(command=list(run.command), env=dict(run.env), network=run.network)
    policy["run"]["isolation"] = run.isolation
    policy["run"]["timeout"] = int(run.timeout) if run.timeout == int(run.timeout) else run.timeout
    path.write_text(json.dumps(policy, indent=2) + "\n")


def run_loader(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m loader ARGS` from the repository, as a user runs `trusted-loader ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "loader", *map(str, args)],
        cwd=REPO,
        env=loader_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def loader_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET" and not k.startswith("TL_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@dataclass(frozen=True)
class DaemonRun:
    returncode: int
    stdout: str
    stderr: str
    messages: list[dict[str, str]]
    raw_messages: list[bytes]


def _parse(datagram: bytes) -> dict[str, str]:
    fields = {}
    for line in datagram.decode("utf-8").split("\n"):
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


def run_daemon(args: list[str], *, abstract: bool = True, timeout: float = 60, **env: str) -> DaemonRun:
    """Run `python -m loader ARGS` with NOTIFY_SOCKET bound by us; collect every datagram."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tmpdir = None
    if abstract:
        name = f"trusted-loader-test-{secrets.token_hex(8)}"
        sock.bind(b"\0" + name.encode())
        address = "@" + name
    else:
        tmpdir = Path(os.path.realpath("/tmp")) / f"tl-{secrets.token_hex(4)}"
        tmpdir.mkdir()
        address = str(tmpdir / "notify")
        sock.bind(address)
    sock.settimeout(0.1)
    raw: list[bytes] = []
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loader", *args],
            cwd=REPO,
            env=loader_env(NOTIFY_SOCKET=address, **env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                raw.append(sock.recv(4096))
            except TimeoutError:
                continue
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=10)
        while True:
            try:
                raw.append(sock.recv(4096))
            except (TimeoutError, BlockingIOError):
                break
    finally:
        sock.close()
        if tmpdir is not None:
            for p in tmpdir.iterdir():
                p.unlink()
            tmpdir.rmdir()
    return DaemonRun(proc.returncode, out.decode(), err.decode(), [_parse(m) for m in raw], raw)
