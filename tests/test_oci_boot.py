"""The boot flow with an OCI engine: measured as its manifest digest (report kind "oci"), run
through the OCI runner (a stand-in for podman here), replayable; mismatches abort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loader.boot.config import load_config
from loader.boot.sequence import boot
from loader.errors import ConfigError
from loader.report.document import parse_report
from tests import oci_helpers as h
from tests.conftest import cli
from tests.test_oci_runner import calls, fake_runtime


def use_oci_engine(workdir: Path, runtime: Path | None, *, approve: bool = True) -> str:
    built = h.build(("linux/amd64", "linux/arm64"), multi=True)
    h.write_layout(workdir / "inputs" / "image", built)
    want = built.manifests["linux/amd64"]
    if approve:
        policy = json.loads((workdir / "approved.json").read_text())
        policy["engine"].update(kind="oci", digest=want)
        policy["run"] = {
            "runtime": "oci",
            "command": ["--out", "{output}"],
            "env": {},
            "network": "none",
            "timeout": 30,
            "platform": "linux/amd64" if runtime is not None else None,
        }
        (workdir / "approved.json").write_text(json.dumps(policy, indent=2))
    cfg = (workdir / "loader.toml").read_text()
    cfg = cfg.replace('engine = "inputs/engine"', 'engine = "inputs/image"')
    run = cfg.index("[run]")
    cfg = cfg[:run] + '[run]\nruntime = "oci"\ncommand = ["--out", "{output}"]\ntimeout = 30\nuid = 64123\n'
    if runtime is not None:
        cfg += f'\n[run.oci]\nruntime_path = "{runtime}"\nplatform = "linux/amd64"\n'
    (workdir / "loader.toml").write_text(cfg)
    return want


def test_oci_engine_is_measured_run_and_replayable(demo_dir: Path, tmp_path: Path) -> None:
    exe, log = fake_runtime(tmp_path)
    want = use_oci_engine(demo_dir, exe)
    outcome = boot(load_config(demo_dir / "loader.toml"), report_out=demo_dir / "report.cbor")
    assert outcome.verdict == "run", outcome.reasons
    assert outcome.exit_code == 0
    payload = parse_report(outcome.report).payload
    engine = next(i for i in payload["inputs"] if i["role"] == "engine")
    assert (engine["kind"], engine["digest"], engine["expected"]) == ("oci", want, want)
    assert payload["hashing"]["bytes"] == sum(i["size"] for i in payload["inputs"])
    assert payload["hashing"]["bytes"] > 0 and payload["hashing"]["rate"] > 0
    pull, run = calls(log)
    assert pull[0] == "pull" and run[0] == "run" and "--network=none" in run
    assert "--user=64123:64123" in run  # the engine's own identity, never root
    record = payload["containment"]
    assert (record["isolation"], record["uid"], record["network"]) == ("oci", 64123, "none")
    assert run[-2:] == ["--out", "/output"]
    replay = cli(
        "replay",
        demo_dir / "report.cbor",
        "--allow-mock",
        "--partial",
        "--reference",
        demo_dir / "reference.json",
        "--input",
        f"engine={demo_dir / 'inputs' / 'image'}",
    )
    assert replay.returncode == 0, replay.stderr
    assert "engine" in replay.stdout and "matches" in replay.stdout


def test_oci_engine_with_process_runtime_aborts(demo_dir: Path) -> None:
    use_oci_engine(demo_dir, None)
    cfg = (demo_dir / "loader.toml").read_text().replace('runtime = "oci"\n', "")
    cfg = cfg.replace('command = ["--out", "{output}"]', 'command = ["/bin/true"]')
    (demo_dir / "loader.toml").write_text(cfg)
    policy = json.loads((demo_dir / "approved.json").read_text())
    policy["run"].update(runtime="process", command=["/bin/true"])  # approved as configured
    (demo_dir / "approved.json").write_text(json.dumps(policy, indent=2))
    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.verdict == "abort" and outcome.exit_code == 3
    assert any('runtime = "oci"' in r for r in outcome.reasons)


def test_unapproved_oci_engine_never_reaches_the_runtime(demo_dir: Path, tmp_path: Path) -> None:
    exe, log = fake_runtime(tmp_path)
    use_oci_engine(demo_dir, exe, approve=False)
    outcome = boot(load_config(demo_dir / "loader.toml"))
    assert outcome.verdict == "abort"
    assert not log.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.replace("[inputs]\n", '[inputs]\nengine_format = "docker"\n'), "engine_format"),
        (lambda c: c + '\n[run.oci]\nnetwork = "a b"\n', "network"),
        (lambda c: c + "\n[run.oci]\nprivileged = true\n", "privileged"),
        (lambda c: c + '\n[run.oci]\nplatform = "amd64"\n', "platform"),
        (lambda c: c.replace("[run]\n", '[run]\nruntime = "docker"\n'), "runtime"),
    ],
)
def test_bad_oci_settings_are_config_errors(demo_dir: Path, edit, message: str) -> None:
    path = demo_dir / "loader.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_oci_runtime_may_omit_the_command(demo_dir: Path) -> None:
    path = demo_dir / "loader.toml"
    text = path.read_text()
    start = text.index("[run]")
    path.write_text(text[:start] + '[run]\nruntime = "oci"\n')
    cfg = load_config(path)
    assert (cfg.run.runtime, cfg.run.command, cfg.run.oci.network) == ("oci", (), "none")
    assert cfg.inputs[0].format == "auto"


def test_digest_command_on_an_image_and_as_plain(tmp_path: Path) -> None:
    built = h.build(("linux/amd64", "linux/arm64"), multi=True)
    layout = h.write_layout(tmp_path / "image", built)
    res = cli("digest", layout, "--platform", "linux/arm64")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == built.manifests["linux/arm64"]
    assert "OCI image" in res.stderr
    plain = cli("digest", "--format", "plain", layout)
    assert plain.returncode == 0 and plain.stdout.strip() not in built.manifests.values()
    assert plain.stdout.startswith("sha256:")
    bad = cli("digest", "--format", "oci", tmp_path / "image" / "index.json")
    assert bad.returncode == 2 and "not an uncompressed tar archive" in bad.stderr
