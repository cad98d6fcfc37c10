"""Consent covers execution and kinds (issue 14): what the parties signed is how the engine runs.

The attacker is the operator of a signed three-party job: the parties' signed list, their
encrypted datasets and grants made for it. Changing the command (to copy the decrypted datasets
into the clear output), the environment (LD_PRELOAD) or the output recipient aborts before any
dataset is decrypted, with every difference listed; a list that approves the same changes runs
and its report shows them. A file holding a directory's `sha256sum` listing has the directory's
digest but not its kind: the run aborts and replay fails.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loader.boot.config import load_config
from loader.boot.sequence import EXIT_ABORTED, boot
from loader.cli import demo
from loader.report.document import parse_report
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.conftest import cli
from tests.multiparty_helpers import build, edit_config, install_probe, run_with_agents
from tests.review_helpers import base_payload, checks_of, forge

LEAK = '["/bin/sh", "-c", "cp -r $TL_DATASETS $TL_OUTPUT/leak"]'
RECIPIENT = 'recipient = "parties/order-owner/key.pub.pem"\n'


def _command_line(config: Path) -> str:
    return next(line for line in config.read_text().splitlines() if line.startswith("command = "))


def _leak(config: Path) -> None:
    edit_config(config, _command_line(config), f"command = {LEAK}")


def _preload(config: Path) -> None:
    edit_config(config, "timeout = 120\n", 'timeout = 120\nenv = {LD_PRELOAD = "/tmp/evil.so"}\n')


def _no_recipient(config: Path) -> None:
    edit_config(config, RECIPIENT, "")


ATTACKS = {
    "leaking command": (_leak, [r'^run.command: configured \["/bin/sh", "-c", "cp -r \$TL_DATASETS']),
    "LD_PRELOAD": (_preload, [r"^run.env.LD_PRELOAD: configured '/tmp/evil.so', but the approved list"]),
    "removed recipient": (_no_recipient, [r"^output.recipient: configured none .*list says sha256:"]),
}


def _abort_reasons(outcome: Any) -> list[str]:
    return [r for r in outcome.reasons if r.startswith(("run.", "output."))]


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_unapproved_execution_change_aborts_before_decryption(tmp_path, monkeypatch, attack):
    import re

    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    change, patterns = ATTACKS[attack]
    change(config)
    outcome, _ = run_with_agents(config, tmp_path, lambda: None)  # no grant is needed to refuse
    assert outcome.verdict == "abort" and outcome.exit_code == EXIT_ABORTED
    found = _abort_reasons(outcome)
    assert len(found) == len(patterns) and all(re.search(p, r) for p, r in zip(patterns, found, strict=True))
    assert probe.decrypt_calls == [] and not (tmp_path / "output").exists()
    check = verify_report(outcome.report, allow_mock=True, appraisal=MOCK)
    assert check.ok, check.reason()  # an honest abort report


def test_every_difference_is_listed_at_once(tmp_path, monkeypatch):
    probe = install_probe(monkeypatch)
    config = build(tmp_path)
    for change in (_leak, _preload, _no_recipient):
        change(config)
    edit_config(config, "timeout = 120\n", "timeout = 7200\n")
    outcome, _ = run_with_agents(config, tmp_path, lambda: None)
    assert outcome.exit_code == EXIT_ABORTED
    fields = [r.split(":")[0] for r in _abort_reasons(outcome)]
    assert fields == ["run.command", "run.timeout", "run.env.LD_PRELOAD", "output.recipient"]
    assert probe.decrypt_calls == []


def test_a_signed_list_that_approves_them_runs_and_the_report_shows_them(tmp_path):
    config = build(tmp_path)
    for change in (_leak, _preload, _no_recipient):
        change(config)
    policy_path = tmp_path / "approved.json"
    policy = json.loads(policy_path.read_text())
    policy["run"].update(
        command=json.loads(LEAK), env={"LD_PRELOAD": "/nonexistent/consented.so"}
    )  # a path that does not exist: the dynamic loader warns and goes on
    edit_config(config, "/tmp/evil.so", "/nonexistent/consented.so")
    policy["output"]["recipient"] = None
    policy_path.write_text(json.dumps(policy, indent=2))
    demo.sign_policy(tmp_path, policy_path)  # the parties consent, knowingly
    outcome, errors = run_with_agents(config, tmp_path)
    assert errors == []
    assert outcome.verdict == "run" and outcome.exit_code == 0, outcome.reasons
    run = parse_report(outcome.report).payload["run"]
    assert run["command"] == json.loads(LEAK)
    assert run["env"] == {"LD_PRELOAD": "/nonexistent/consented.so"}
    assert run["recipient"] is None and run["network"] == "none" and run["timeout_ms"] == 120_000
    assert (outcome.output_dir / "output" / "leak").is_dir()  # what they approved, they got
    check = verify_report(outcome.report, allow_mock=True, appraisal=MOCK)
    assert check.ok, check.reason()


def test_report_verify_re_derives_the_execution_consent(demo_report):
    """A report signed by a genuine (mock) CVM whose loader claims it ran with an unapproved
    command: verification re-derives the decision from the recorded execution and refuses."""
    template = base_payload(demo_report[1])
    assert verify_report(forge(template), allow_mock=True, appraisal=MOCK).ok

    def swap_command(payload: dict[str, Any]) -> None:
        payload["run"]["command"] = json.loads(LEAK)

    result = checks_of(verify_report(forge(template, mutate=swap_command), allow_mock=True, appraisal=MOCK))
    assert result["decision"][0] is False and "run.command: configured" in result["decision"][1]


# --- kinds are identity ------------------------------------------------------------------------


def _listing_file(directory: Path, out: Path) -> Path:
    """A file whose content is the directory's `sha256sum` listing: the same digest."""
    listing = subprocess.run(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum",
        shell=True,
        cwd=directory,
        capture_output=True,
        check=True,
    ).stdout
    out.write_bytes(listing)
    return out


def test_a_file_with_a_directorys_digest_aborts_the_run(demo_dir: Path, tmp_path: Path):
    lab = demo_dir / "inputs" / "datasets" / "lab"
    fake = _listing_file(lab, tmp_path / "lab.listing")
    assert cli("digest", fake).stdout == cli("digest", lab).stdout  # the ambiguity itself
    config = demo_dir / "loader.toml"
    edit_config(config, 'lab = "inputs/datasets/lab"', f'lab = "{fake}"')
    outcome = boot(load_config(config))
    assert outcome.exit_code == EXIT_ABORTED
    assert outcome.reasons == ("dataset 'lab': kind file does not match the approved directory",)


def test_replay_with_the_real_directory_fails_for_a_file_input(demo_dir: Path, tmp_path: Path):
    """The operator writes a list naming the listing file (kind file) and runs it; the owner
    replays the report with their real directory: same digest, different kind, refused."""
    lab = demo_dir / "inputs" / "datasets" / "lab"
    fake = _listing_file(lab, tmp_path / "lab.listing")
    policy = json.loads((demo_dir / "approved.json").read_text())
    policy["datasets"][0]["kind"] = "file"
    (demo_dir / "approved.json").write_text(json.dumps(policy))
    config = demo_dir / "loader.toml"
    edit_config(config, 'lab = "inputs/datasets/lab"', f'lab = "{fake}"')
    report = demo_dir / "report.cbor"
    assert boot(load_config(config), report_out=report).verdict == "run"
    pinned = ("--allow-mock", "--reference", demo_dir / "reference.json")
    refused = cli("replay", report, *pinned, "--partial", "--input", f"dataset:lab={lab}")
    assert refused.returncode == 1
    assert "DIFFERS: report has a file input, found a directory" in refused.stdout
    same = cli("replay", report, *pinned, "--partial", "--input", f"dataset:lab={fake}")
    assert same.returncode == 0, same.stderr


def test_staging_normalises_mode_bits(demo_dir: Path, tmp_path: Path, monkeypatch):
    """Mode bits are not measured: an executable bit set on a dataset file never reaches the
    engine, and the engine is executable whatever its original mode."""
    from loader.boot import stage
    from loader.boot.stage import InputSpec, stage_input

    data = tmp_path / "data"
    data.mkdir()
    (data / "run-me.sh").write_text("#!/bin/sh\n")
    (data / "run-me.sh").chmod(0o755)
    m = stage_input(InputSpec("dataset", "d", data), tmp_path / "staging")
    assert (m.staged / "run-me.sh").stat().st_mode & 0o777 == 0o400
    engine = tmp_path / "engine"
    engine.write_text("print(1)\n")
    engine.chmod(0o600)
    e = stage_input(InputSpec("engine", "engine", engine), tmp_path / "staging")
    assert e.staged.stat().st_mode & 0o777 == 0o500
    assert stage.staged_mode("config") == 0o400


def test_config_check_lists_what_the_list_does_not_consent_to(demo_dir: Path):
    config = demo_dir / "loader.toml"
    assert cli("config", "check", config).returncode == 0
    _preload(config)
    done = cli("config", "check", config, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["consent"] == [
        "run.env.LD_PRELOAD: configured '/tmp/evil.so', but the approved list does not name it"
    ]
