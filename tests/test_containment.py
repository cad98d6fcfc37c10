"""Issue 13: a hostile engine can neither reach the loader nor speak for the hardware.

Run as root (as CI does): real uid switches (uid 64123, no passwd entry), real namespaces. The
hostile engine (tests/hostile_engine.py) tries every attack; each must fail, and the job must
still end with a signed report that verifies and whose output digest matches the output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import pytest

from loader.boot.config import load_config
from loader.boot.sequence import boot
from loader.measure.digest import digest_path
from loader.report.document import parse_report
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.ops_helpers import approve_configured_run, make_job

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
    approve_configured_run(job.config)
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
    assert attempts["dev"] == [
        "fd",
        "full",
        "null",
        "random",
        "shm",
        "stderr",
        "stdin",
        "stdout",
        "urandom",
        "zero",
    ]
    assert attempts["fds"] == [0, 1, 2, 3]  # stdin (null), its two logs, and the listing itself
    assert attempts["pids"] == [1, 2] or len(attempts["pids"]) <= 3, attempts["pids"]  # init, engine
    status = attempts["status"]
    assert all(status[k] == "0000000000000000" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert status["NoNewPrivs"] == "1"
    time.sleep(1.5)  # the grandchild would have struck by now
    output = outcome.output_dir / "output"
    assert (output / "result.txt").read_text() == "the engine's honest result\n"
    assert (output / "result.txt").stat().st_uid == 0  # taken back from the engine's uid
    assert report_out.read_bytes() == outcome.report and outcome.spool_path.read_bytes() == outcome.report
    payload = parse_report(outcome.report).payload
    assert payload["workload"]["output"]["digest"] == digest_path(output).digest
    rtmr3 = (setup["tee"] / "dev" / "mock-tee" / "rtmr3").read_bytes()
    from attestation import rtmr

    assert rtmr3 == rtmr.replay([e["value"] for e in payload["events"]])  # nothing but the loader's
    record = payload["containment"]
    assert record["isolation"] == "namespaces" and record["uid"] == UID and record["network"] == "none"
    assert set(record["namespaces"]) == {"pid", "mount", "ipc", "uts", "net"}
    result = verify_report(outcome.report, allow_mock=True, appraisal=MOCK)
    assert result.ok, result.reason()


def test_uncontained_engine_reaches_everything_and_verify_refuses_it(tmp_path: Path) -> None:
    """The control: with isolation = "none" the same probes succeed, so they can fail above."""
    setup = _hostile_job(tmp_path, isolation="none")
    outcome, attempts, _ = _run(setup)
    assert outcome.exit_code == 0, outcome.reasons
    for name in ("account_key", "configuration", "tsm_entry", "tee_device", "rtmr3", "network"):
        assert attempts[name] == "SUCCEEDED", (name, attempts[name])
    assert parse_report(outcome.report).payload["containment"]["isolation"] == "none"
    refused = verify_report(outcome.report, allow_mock=True, appraisal=MOCK)
    assert not refused.ok and refused.reason().startswith("containment: isolation 'none'")
    # The engine extended the mock RTMR3 after the loader's boundary: the record shows it.
    accepted = verify_report(outcome.report, allow_mock=True, allow_no_isolation=True, appraisal=MOCK)
    assert accepted.ok, accepted.reason()


def test_loader_is_not_dumpable_once_the_key_exists(demo_dir: Path) -> None:
    import ctypes

    boot(load_config(demo_dir / "loader.toml"))
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE


SLEEPER = """import os, sys, time
out = os.environ["TL_OUTPUT"]
open(os.path.join(out, "result.txt"), "w").write("before the timeout\\n")
if os.fork() == 0:
    os.setsid()
    time.sleep(1.5)
    open(os.path.join(out, "result.txt"), "w").write("rewritten after the timeout\\n")
    os._exit(0)
time.sleep(60)
"""


def test_timeout_kills_every_process_the_engine_started(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", engine_source=SLEEPER)
    text = job.config.read_text().replace("timeout = 120", "timeout = 0.5")
    job.config.write_text(text.replace("uid = 65534\ngid = 65534", f"uid = {UID}\ngid = {UID}"))
    approve_configured_run(job.config)
    start = time.monotonic()
    outcome = boot(load_config(job.config))
    assert outcome.workload is not None and outcome.workload.timed_out
    assert time.monotonic() - start < 10
    time.sleep(1.5)
    output = outcome.output_dir / "output"  # type: ignore[operator]
    assert (output / "result.txt").read_text() == "before the timeout\n"
    assert parse_report(outcome.report).payload["workload"]["output"]["digest"] == digest_path(output).digest


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("uid = 0", "run.uid: expected a non-root id"),
        ('isolation = "chroot"', "run.isolation: expected one of ['namespaces', 'none']"),
        ('network = "bridge"', "run.network: expected one of ['none', 'host']"),
        ("gid = 5", "run.gid: set together with [run] uid"),
    ],
)
def test_containment_settings_are_checked(demo_dir: Path, line: str, message: str) -> None:
    from loader.errors import ConfigError

    cfg = demo_dir / "loader.toml"
    text = cfg.read_text().replace("uid = 65534\ngid = 65534\n", "")
    cfg.write_text(text.replace("timeout = 120", f"timeout = 120\n{line}"))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(cfg)


def test_missing_engine_account_refuses_to_start_the_engine(demo_dir: Path) -> None:
    cfg = demo_dir / "loader.toml"
    text = cfg.read_text().replace("uid = 65534\ngid = 65534\n", "")
    cfg.write_text(text.replace("timeout = 120", 'timeout = 120\nuser = "no-such-engine-account"'))
    outcome = boot(load_config(cfg))
    assert outcome.exit_code == 3 and outcome.workload is None
    assert outcome.reasons[-1].startswith(
        "containment: run.user: the engine account 'no-such-engine-account'"
    )
    assert verify_report(outcome.report, allow_mock=True, appraisal=MOCK).ok  # a signed abort that verifies


def _forge(loader_report: bytes, evidence_for) -> bytes:  # type: ignore[no-untyped-def]
    """The attacker's report: the loader's payload, under the attacker's own key and evidence."""
    import datetime as dt
    import secrets

    from cryptography.hazmat.primitives import serialization

    from attestation import binding
    from certs.selfissue import self_issue
    from loader.boot.keys import EphemeralKey
    from loader.report.document import sign_report

    key = EphemeralKey()
    payload = dict(parse_report(loader_report).payload)
    nonce = secrets.token_bytes(binding.NONCE_LEN)
    evidence = evidence_for(binding.report_data(key.spki, nonce, []))
    payload.update(key={"alg": "ES384", "spki": key.spki}, nonce=nonce, evidence=[evidence.to_cbor_obj()])
    bundle = {"nonce": nonce, "evidence": payload["evidence"], "claims": {}}
    cert = self_issue(
        key.private, common_name="trusted-loader demo", bundle=bundle, now=dt.datetime.now(dt.UTC)
    )
    return sign_report(payload, x5chain=[cert.public_bytes(serialization.Encoding.DER)], sign=key.sign_raw)


def _failed(raw: bytes) -> dict[str, str]:
    return {n: d for n, p, d in verify_report(raw, allow_mock=True, appraisal=MOCK).checks if not p}


def _failed_unpinned(raw: bytes) -> dict[str, str]:
    """The checks that fail when the verifier pins no image (--any-image)."""
    from attestation.reference import Appraisal

    checks = verify_report(raw, allow_mock=True, appraisal=Appraisal(any_image=True)).checks
    return {n: d for n, p, d in checks if not p}


def test_mock_evidence_made_after_the_workload_started_is_refused(demo_dir: Path) -> None:
    """An engine that got the mock device anyway (or ran later in this VM) signs a report with
    evidence of its own: RTMR3 in that evidence includes the workload start, so it is refused."""
    from attestation.mock.attester import MockAttester

    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.exit_code == 0, outcome.reasons
    register = demo_dir / "tee" / "dev" / "mock-tee" / "rtmr3"
    after_start = register.read_bytes()

    def evidence_at(value: bytes):  # type: ignore[no-untyped-def]
        def collect(report_data: bytes):  # type: ignore[no-untyped-def]
            attester = MockAttester(root=demo_dir / "tee")  # "boots" the mock: RTMR3 zero...
            register.write_bytes(value)  # ...then the register holds what the attacker found
            return attester.collect(report_data)

        return collect

    forged = _forge(outcome.report, evidence_at(after_start))
    # Refused twice over: the boundary check replays the log, and the reference values pin RTMR3
    # as the loader finds it at boot (zero), which evidence made after any extension is not.
    assert list(_failed(forged)) == ["evidence[0].reference", "rtmr3"]
    assert "includes a workload start" in _failed(forged)["rtmr3"]
    assert "includes a workload start" in _failed_unpinned(forged)["rtmr3"]  # without the pin too
    # The control: the same forgery with evidence from before the boundary passes every check,
    # so it is the RTMR3 history alone that tells the engine's evidence from the loader's.
    assert _failed(_forge(outcome.report, evidence_at(bytes(48)))) == {}
    # Evidence whose RTMR3 no replay of the log reaches is refused too.
    assert "rtmr3" in _failed(_forge(outcome.report, evidence_at(b"\x07" * 48)))


RTMR3_OFFSET = 48 + 472  # quote header, then the TD report body up to RTMR3


def synthetic_quote_with_rtmr3(real: bytes, value: bytes) -> bytes:
    """SYNTHETIC: a real TDX quote with RTMR3 rewritten (its signature no longer verifies)."""
    from attestation.tdx import quote

    forged = real[:RTMR3_OFFSET] + value + real[RTMR3_OFFSET + 48 :]
    assert quote.parse(forged).body.rtmr3 == value
    return forged


def test_tdx_evidence_made_after_the_workload_started_is_refused(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the fake configfs-tsm tree: the quote's RTMR3 follows the fake register, so a
    quote taken after the loader's workload-start carries it, and report verify refuses it.

    The boot's collateral step is skipped here: every real quote's collateral is stale today, so
    the job would abort before the workload-start this test is about (the collateral tests in
    test_collateral_report.py judge these quotes)."""
    import loader.boot.sequence

    monkeypatch.setattr(loader.boot.sequence, "_collateral", lambda state: None)
    from attestation.tdx.attester import TdxAttester
    from tests.tdx_helpers import ROOT, FakeTdxKernel, quote_bytes
    from tests.test_boot_hw import _use_tee

    real = quote_bytes("trustee_6")

    class FollowingKernel(FakeTdxKernel):
        def _record(self, inblob: bytes, _lvl: int | None) -> tuple[bytes, bytes]:
            self.inblobs.append(inblob)
            return synthetic_quote_with_rtmr3(real, self.rtmrs[3]), b""

    kernel = FollowingKernel(real)
    outcome = boot(load_config(_use_tee(demo_dir, "tdx")), attester=TdxAttester(root=ROOT, ops=kernel))
    assert outcome.exit_code == 0, outcome.reasons
    loader_checks = verify_report(outcome.report).checks
    assert ("rtmr3", True) in [(n, p) for n, p, _ in loader_checks]
    engine = TdxAttester(root=ROOT, ops=kernel)  # the attacker asks the same TEE, later
    failed = {n: d for n, p, d in verify_report(_forge(outcome.report, engine.collect)).checks if not p}
    assert "includes a workload start" in failed["rtmr3"], failed


PROBE = """#!/bin/sh
out="$TL_OUTPUT/probe.txt"
{ id -u; ls /dev; grep -E '^(Cap(Eff|Bnd)|NoNewPrivs)' /proc/self/status; } > "$out"
cat "$1" >> "$out" 2>&1 || echo secret-denied >> "$out"
"""


def _staged(base: Path, owner: int) -> object:
    from loader.boot.runner import StagedPaths

    (base / "inputs" / "dataset").mkdir(parents=True)
    engine = base / "inputs" / "engine"
    engine.write_text(PROBE)
    engine.chmod(0o755)
    for path in (base, base / "inputs", base / "inputs" / "dataset", engine):
        os.chown(path, owner, owner)
    return StagedPaths(engine, None, {}, base / "inputs" / "dataset", base / "output", base / "logs")


def _probe(sandbox, paths, secret: Path, *, prefix: tuple[str, ...] = (), python: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    import subprocess

    from loader.boot.runner import environment

    paths.output.mkdir(mode=0o700)
    paths.logs.mkdir(mode=0o700)
    r, w = os.pipe()
    argv = sandbox.wrap([str(paths.engine), str(secret)], environment(paths, {}), paths, w, python=python)
    for path in (paths.output, paths.logs):
        os.chown(path, sandbox.identity.uid, sandbox.identity.gid)
    done = subprocess.run([*prefix, *argv], pass_fds=(w,), capture_output=True, timeout=60, check=False)
    os.close(w)
    assert os.read(r, 100) == b"ready\n", done.stderr
    os.close(r)
    assert done.returncode == 0, done.stderr
    return (paths.output / "probe.txt").read_text().split("\n")


def test_unprivileged_loader_contains_the_engine_in_a_user_namespace(tmp_path: Path) -> None:
    """The demo as a non-root user: no uid to switch to, so the engine is root without any
    capability in a user namespace mapped to the loader's uid, in the same namespaces."""
    import shutil
    import tempfile

    from loader.boot.sandbox import Identity, Sandbox

    user = 64124
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chown(base, user, user)
        paths = _staged(base, user)
        (base / "root").mkdir()
        os.chown(base / "root", user, user)
        secret = tmp_path / "secret"
        secret.write_text("the loader's secret\n")
        box = Sandbox(Identity(user, user, user_namespace=True), "none", (), base / "root")
        setpriv = ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--")
        lines = _probe(box, paths, secret, prefix=setpriv, python="/usr/bin/python3")
    finally:
        shutil.rmtree(base)
    assert lines[0] == "0"  # root in its own user namespace...
    assert "CapEff:\t0000000000000000" in lines and "CapBnd:\t0000000000000000" in lines  # ...with nothing
    assert "NoNewPrivs:\t1" in lines and "secret-denied" in lines
    assert "tdx_guest" not in lines and "null" in lines


def test_gpu_device_nodes_are_passed_only_when_gpu_is_on(tmp_path: Path) -> None:
    from loader.boot.sandbox import Identity, Sandbox, gpu_devices

    tee = tmp_path / "tee"
    (tee / "dev").mkdir(parents=True)
    for name in ("nvidia0", "nvidiactl", "sev-guest"):
        (tee / "dev" / name).write_bytes(b"")
    assert gpu_devices(tee, "none") == ()
    devices = gpu_devices(tee, "mock")
    assert [Path(d).name for d in devices] == ["nvidia0", "nvidiactl"]
    seen = {}
    for mode, nodes in (("on", devices), ("off", ())):
        base = tmp_path / mode
        base.mkdir()
        (base / "root").mkdir()
        box = Sandbox(Identity(UID, UID, user_namespace=False), "none", nodes, base / "root")
        seen[mode] = _probe(box, _staged(base, 0), tmp_path / "missing")
    assert seen["on"][0] == str(UID) and {"nvidia0", "nvidiactl"} <= set(seen["on"])
    assert "sev-guest" not in seen["on"] and not {"nvidia0", "nvidiactl"} & set(seen["off"])


def test_an_operator_cannot_turn_containment_off_without_the_parties(demo_dir: Path) -> None:
    """An uncontained engine could take the loader's key and sign a report claiming anything,
    containment included: so "none" needs the approved list's consent, or the job aborts."""
    cfg = demo_dir / "loader.toml"
    cfg.write_text(cfg.read_text().replace("timeout = 120", 'timeout = 120\nisolation = "none"'))
    outcome = boot(load_config(cfg))
    assert outcome.exit_code == 3 and outcome.workload is None
    assert outcome.reasons == ('run.isolation: configured "none", but the approved list says "namespaces"',)
    assert verify_report(outcome.report, allow_mock=True, appraisal=MOCK).ok  # a signed abort that verifies


def test_report_verify_refuses_no_isolation_unless_told_and_says_so(demo_dir: Path) -> None:
    from tests.conftest import cli

    cfg = demo_dir / "loader.toml"
    cfg.write_text(cfg.read_text().replace("timeout = 120", 'timeout = 120\nisolation = "none"'))
    approve_configured_run(cfg)  # the parties consented to an uncontained engine
    report = demo_dir / "none.cbor"
    report.write_bytes(boot(load_config(cfg)).report)
    ref = demo_dir / "reference.json"
    refused = cli("report", "verify", report, "--allow-mock", "--reference", ref)
    assert refused.returncode == 1 and "FAIL containment: isolation 'none'" in refused.stdout
    text = cli("report", "verify", report, "--allow-mock", "--reference", ref, "--allow-no-isolation")
    assert text.returncode == 0, text.stderr
    assert "--allow-no-isolation given" in text.stdout and "accepted (--allow-no-isolation)" in text.stdout
    js = cli("report", "verify", report, "--allow-mock", "--reference", ref, "--allow-no-isolation", "--json")
    assert js.returncode == 0 and json.loads(js.stdout)["allow_no_isolation"] is True


def _system_python() -> str | None:
    """A system interpreter of this minor version that an unprivileged uid can run this venv with."""
    import shutil
    import sys

    return shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/bin")


def test_demo_runs_contained_for_an_unprivileged_user(tmp_path: Path) -> None:
    """`trusted-loader demo` as uid 64124 (setpriv): the engine is contained in a user namespace."""
    import shutil
    import subprocess
    import sysconfig
    import tempfile

    from tests.ops_helpers import REPO

    python, user = _system_python(), 64124
    if python is None or shutil.which("setpriv") is None:
        pytest.skip("no system python of this version for an unprivileged uid to run the loader with")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    setpriv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
    probe = subprocess.run(
        [*setpriv, python, "-c", "import loader, cryptography, cbor2"], env=env, check=False
    )
    if probe.returncode != 0:
        pytest.skip("this checkout or its packages are not readable by an unprivileged uid")
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chown(base, user, user)
        env["HOME"] = str(base)
        done = subprocess.run(
            [*setpriv, python, "-m", "loader", "demo", "--workdir", str(base / "demo")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        raw = (base / "demo" / "report.cbor").read_bytes()
    finally:
        shutil.rmtree(base)
    record = parse_report(raw).payload["containment"]
    assert (record["isolation"], record["uid"], record["user_namespace"]) == ("namespaces", user, True)
    assert {"pid", "mount", "net", "user"} <= set(record["namespaces"])
    assert verify_report(raw, allow_mock=True, appraisal=MOCK).ok


DEEP = """import os
os.chdir(os.environ["TL_OUTPUT"])
for _ in range(1500):
    os.mkdir("d")
    os.chdir("d")
open("f", "w").write("x")
"""


def test_a_hostile_output_tree_cannot_crash_the_loader_before_it_signs(tmp_path: Path) -> None:
    """1500 nested directories once made the loader's output walk raise RecursionError: no report."""
    job = make_job(tmp_path / "job", engine_source=DEEP)
    outcome = boot(load_config(job.config))
    assert outcome.exit_code == 5
    workload = parse_report(outcome.report).payload["workload"]
    assert (
        workload["error"] == "output: deeper than 128 directories; discarded" and workload["output"] is None
    )
    assert verify_report(outcome.report, allow_mock=True, appraisal=MOCK).ok


def test_loader_files_in_a_visible_directory_are_masked_and_exposing_them_is_refused(tmp_path: Path) -> None:
    from loader.boot.sandbox import ContainmentError, plan

    job = make_job(tmp_path / "job")
    run = load_config(job.config).run
    secret = Path("/etc/os-release").resolve()  # stands for a configuration kept under /etc
    assert secret.read_text()
    staging = tmp_path / "staging" / "job"
    staging.mkdir(parents=True)
    box = plan(
        run, tee_root=Path("/"), gpu_mode="none", workdir=staging, private=(secret, tmp_path / "staging")
    )
    assert box.masked == (str(secret),)
    lines = _probe(box, _staged(tmp_path / "s", 0), secret)
    assert not any("NAME=" in line for line in lines) and "secret-denied" not in lines  # reads as empty
    exposing = dataclasses.replace(run, expose=(job.workdir,))
    with pytest.raises(ContainmentError, match=r"run\.expose: .* holds the loader's .*loader\.toml"):
        plan(exposing, tee_root=Path("/"), gpu_mode="none", workdir=staging, private=(job.config,))
