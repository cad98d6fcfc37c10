"""The boot flow end to end on the mock TEE: run, abort, replay, staging, key hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loader.boot import sequence as boot_mod
from loader.boot.config import load_config
from loader.boot.sequence import EXIT_ABORTED, EXIT_ATTESTATION, EXIT_WORKLOAD, boot
from loader.cli import demo
from loader.report.document import parse_report
from loader.report.verify import verify_report
from tests.conftest import cli


def report_json(path: Path) -> dict:
    res = cli("report", "show", path, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_demo_report_verifies_only_with_allow_mock(demo_report: tuple[Path, bytes]) -> None:
    workdir, _ = demo_report
    report = workdir / "report.cbor"
    ref = workdir / "reference.json"
    ok = cli("report", "verify", report, "--allow-mock", "--reference", ref, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    refused = cli("report", "verify", report, "--reference", ref)
    assert refused.returncode == 1
    assert "mock" in refused.stdout.splitlines()[-1]  # the result is on stdout
    assert refused.stdout.splitlines()[-1].startswith(f"{report}: NOT verified (checked at ")
    assert "--allow-mock" in refused.stdout and "pass allow_mock" not in refused.stdout
    unpinned = cli("report", "verify", report, "--allow-mock")
    assert unpinned.returncode == 1
    assert "mrtd, rtmr0, rtmr1, rtmr2 unpinned" in unpinned.stdout.splitlines()[-1]
    shown = report_json(report)
    assert shown["decision"] == {"verdict": "run", "reasons": []}
    assert shown["workload"]["exit_code"] == 0
    assert [i["role"] for i in shown["inputs"]] == ["engine", "dataset", "dataset", "config"]
    for name in (
        "inputs/engine",
        "loader.toml",
        "inputs/config.json",
        "inputs/datasets/lab",
        "inputs/datasets/clinic",
    ):
        assert (workdir / name).exists(), name
    assert [p.name for p in (workdir / "spool").glob("*.cbor")] == [shown["digest"][7:] + ".cbor"]


def test_demo_output_is_the_engines_computation(demo_report: tuple[Path, bytes]) -> None:
    workdir, raw = demo_report
    report = parse_report(raw)
    results = next((workdir / "output").glob("*/output/results.json"))
    data = json.loads(results.read_text())
    assert data["pooled"]["age"]["count"] == 400
    assert report.payload["workload"]["output"]["files"] == 1


def test_replay_then_tamper_then_run_aborts(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    assert cli("demo", "--workdir", workdir).returncode == 0
    report = workdir / "report.cbor"
    lab = workdir / "inputs" / "datasets" / "lab"
    good = cli(
        "replay",
        report,
        "--allow-mock",
        "--reference",
        workdir / "reference.json",
        "--input",
        f"dataset:lab={lab}",
        "--input",
        f"engine={workdir / 'inputs/engine'}",
    )
    assert good.returncode == 1, good.stdout  # two of four inputs: incomplete unless --partial
    assert "not checked: dataset 'clinic', config" in good.stdout
    partial = cli(
        "replay",
        report,
        "--allow-mock",
        "--reference",
        workdir / "reference.json",
        "--partial",
        "--input",
        f"dataset:lab={lab}",
        "--input",
        f"engine={workdir / 'inputs/engine'}",
    )
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert partial.stdout.splitlines()[-1] == (
        "replay PARTIAL: 2 input(s) match; not checked: dataset 'clinic', config"
    )
    full = cli(
        "replay",
        report,
        "--allow-mock",
        "--reference",
        workdir / "reference.json",
        *(
            f"--input={arg}"
            for arg in (
                f"dataset:lab={lab}",
                f"dataset:clinic={workdir / 'inputs/datasets/clinic'}",
                f"engine={workdir / 'inputs/engine'}",
                f"config={workdir / 'inputs/config.json'}",
            )
        ),
    )
    assert full.returncode == 0, full.stdout + full.stderr
    assert full.stdout.splitlines()[-1] == "replay ok: all 4 input(s) of the report match"
    again = cli("run", "--config", workdir / "loader.toml")
    assert again.returncode == 0, again.stderr

    csv = lab / "measurements.csv"
    data = bytearray(csv.read_bytes())
    data[100] ^= 0x01
    csv.write_bytes(bytes(data))
    bad = cli("replay", report, "--allow-mock", "--any-image", "--partial", "--input", f"dataset:lab={lab}")
    assert bad.returncode == 1
    assert "replay failed: dataset 'lab' differ(s)" in bad.stdout

    marker_runs = len(list((workdir / "output").iterdir()))
    out = tmp_path / "abort.cbor"
    run = cli("run", "--config", workdir / "loader.toml", "--report-out", out)
    assert run.returncode == EXIT_ABORTED, run.stderr
    assert "dataset 'lab': digest" in run.stderr
    assert len(list((workdir / "output").iterdir())) == marker_runs, "the engine must not start"
    shown = report_json(out)
    assert shown["decision"]["verdict"] == "abort"
    assert any("dataset 'lab'" in r for r in shown["decision"]["reasons"])
    assert shown["workload"] is None
    verified = cli("report", "verify", out, "--allow-mock", "--reference", workdir / "reference.json")
    assert verified.returncode == 0, verified.stderr


def test_swapped_input_after_staging_cannot_reach_engine(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change the original dataset after it was staged: the engine reads the staged bytes."""
    csv = demo_dir / "inputs" / "datasets" / "lab" / "measurements.csv"
    original = csv.read_bytes()
    real_extend = boot_mod._extend

    def extend_then_swap(state: boot_mod.BootState) -> None:
        real_extend(state)
        csv.write_text("patient,age,hba1c,ldl\nEVIL,999,99,99\n")

    monkeypatch.setattr(boot_mod, "_extend", extend_then_swap)
    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.exit_code == 0, outcome.reasons
    results = json.loads((outcome.output_dir / "output" / "results.json").read_text())
    assert results["datasets"]["lab"]["age"]["count"] == original.count(b"\n") - 1
    assert results["datasets"]["lab"]["age"]["max"] <= 85


def test_private_key_never_touches_disk(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization

    from loader.boot.keys import EphemeralKey

    seen: list[bytes] = []
    real_discard = EphemeralKey.discard

    def capture(self: EphemeralKey) -> None:
        key = self.private
        scalar = key.private_numbers().private_value.to_bytes(48, "big")
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        seen.extend([scalar, scalar.hex().encode(), der, der.hex().encode()])
        real_discard(self)

    monkeypatch.setattr(EphemeralKey, "discard", capture)
    outcome = boot(load_config(demo_dir / "loader.toml"), report_out=demo_dir / "report.cbor")
    assert outcome.exit_code == 0
    assert seen, "the key was captured for the scan"
    scanned = 0
    for path in demo_dir.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            scanned += 1
            for needle in seen:
                assert needle not in blob, f"private key material found in {path}"
    assert scanned > 5
    assert not list((demo_dir / "staging").iterdir()), "staging is wiped"


def test_wipe_recorded_and_staging_removed(demo_report: tuple[Path, bytes]) -> None:
    workdir, raw = demo_report
    payload = parse_report(raw).payload
    assert payload["wipe"]["files"] >= 4
    assert payload["wipe"]["overwritten"] == payload["wipe"]["files"]
    assert list((workdir / "staging").iterdir()) == []


def test_missing_dataset_aborts_naming_it(demo_dir: Path) -> None:
    import shutil

    shutil.rmtree(demo_dir / "inputs" / "datasets" / "clinic")
    res = cli("run", "--config", demo_dir / "loader.toml")
    assert res.returncode == EXIT_ABORTED
    assert "dataset 'clinic'" in res.stderr and "No such file" in res.stderr


def test_symlink_in_dataset_aborts_naming_file(demo_dir: Path) -> None:
    (demo_dir / "inputs" / "datasets" / "lab" / "passwd").symlink_to("/etc/passwd")
    res = cli("run", "--config", demo_dir / "loader.toml")
    assert res.returncode == EXIT_ABORTED
    assert "lab/passwd: is a symbolic link" in res.stderr


def test_unknown_policy_field_aborts_naming_field(demo_dir: Path) -> None:
    policy = json.loads((demo_dir / "approved.json").read_text())
    policy["allow_everything"] = True
    (demo_dir / "approved.json").write_text(json.dumps(policy))
    res = cli("run", "--config", demo_dir / "loader.toml")
    assert res.returncode == EXIT_ABORTED
    assert "approved.json: unknown field 'allow_everything'" in res.stderr


def test_unusable_staging_dir_still_gives_signed_abort(demo_dir: Path) -> None:
    cfg = demo_dir / "loader.toml"
    (demo_dir / "blocker").write_text("a file where the staging directory should be")
    cfg.write_text(cfg.read_text().replace('staging_dir = "staging"', 'staging_dir = "blocker/staging"'))
    outcome = boot(load_config(cfg))
    assert outcome.exit_code == EXIT_ABORTED
    assert outcome.reasons[0].startswith("staging: ")
    assert verify_report(outcome.report, allow_mock=True, appraisal=demo.appraisal(demo_dir)).ok


def test_unreadable_config_is_a_usage_error(tmp_path: Path) -> None:
    res = cli("run", "--config", tmp_path / "nope.toml")
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "nope.toml: cannot read loader config" in res.stderr
    assert res.stderr.count("\n") == 1
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"tee = \xff")
    res = cli("run", "--config", bad)
    assert res.returncode == 2 and "bad.toml: not valid TOML" in res.stderr


def test_unknown_config_key_named(demo_dir: Path) -> None:
    cfg = demo_dir / "loader.toml"
    cfg.write_text(cfg.read_text().replace("timeout = 120", "timeout = 120\ntimeuot = 5"))
    res = cli("run", "--config", cfg)
    assert res.returncode == 2
    assert "run.timeuot: unknown key" in res.stderr


def test_mock_never_chosen_unless_configured(demo_dir: Path) -> None:
    cfg = demo_dir / "loader.toml"
    cfg.write_text(
        cfg.read_text().replace('tee = "mock"', 'tee = "tdx"').replace('root = "tee"', 'root = "fake-root"')
    )
    out = demo_dir / "r.cbor"
    res = cli("run", "--config", cfg, "--report-out", out)
    assert res.returncode == EXIT_ATTESTATION, res.stderr
    payload = parse_report(out.read_bytes()).payload
    assert payload["evidence"] == []
    assert payload["decision"]["verdict"] == "abort"
    assert any(r.startswith("attestation:") for r in payload["decision"]["reasons"])
    assert not verify_report(out.read_bytes(), allow_mock=True, appraisal=demo.appraisal(demo_dir)).ok


def test_workload_timeout_is_killed_and_recorded(demo_dir: Path) -> None:
    engine = demo_dir / "inputs" / "engine"
    engine.write_text("import time\ntime.sleep(60)\n")
    _reapprove(demo_dir, run=demo.demo_run(timeout=1))
    cfg = demo_dir / "loader.toml"
    cfg.write_text(cfg.read_text().replace("timeout = 120", "timeout = 1"))
    outcome = boot(load_config(cfg))
    assert outcome.exit_code == EXIT_WORKLOAD
    assert outcome.workload is not None and outcome.workload.timed_out
    assert outcome.workload.seconds < 10
    assert parse_report(outcome.report).payload["workload"]["timed_out"] is True


def test_failing_workload_exit_code_recorded(demo_dir: Path) -> None:
    (demo_dir / "inputs" / "engine").write_text("import sys\nsys.exit(7)\n")
    _reapprove(demo_dir)
    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.exit_code == EXIT_WORKLOAD
    assert parse_report(outcome.report).payload["workload"]["exit_code"] == 7


def _reapprove(workdir: Path, run: dict | None = None) -> None:
    demo.write_policy(
        workdir,
        {
            "engine": workdir / "inputs" / "engine",
            "config": workdir / "inputs" / "config.json",
            **{f"dataset:{n}": workdir / "inputs" / "datasets" / n for n in demo.DATASETS},
        },
        run=run,
    )
