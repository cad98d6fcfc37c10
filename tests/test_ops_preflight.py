"""One validation path: `config check` refuses what `run` refuses before it attests
(loader/boot/preflight.py), naming the file and the key; `run` refuses it before any evidence."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loader.boot import preflight as preflight_mod
from loader.boot.config import STATE_DIR, load_config
from loader.errors import ConfigError
from tests.ops_helpers import REPO, loader_env, make_job


def _cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *map(str, args)],
        cwd=REPO,
        env=loader_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _edit(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))


def _refused_by_both(config: Path, named: str) -> None:
    """check and run refuse alike: exit 2, one line, naming the file and the key; run has
    attested nothing, staged nothing and stored no report."""
    check = _cli("config", "check", config)
    assert check.returncode == 2, check.stderr
    assert check.stderr.splitlines() == [check.stderr.strip()]
    assert check.stderr.startswith(f"error: {config.resolve()}: {named}"), check.stderr
    run = _cli("run", "--config", config, "--log-format", "text")
    assert run.returncode == 2, run.stderr
    assert f"{config.resolve()}: {named}" in run.stderr
    assert "attest" not in run.stderr.lower() and "inputs match" not in run.stderr
    workdir = config.parent
    assert not list((workdir / "spool").glob("*.cbor")) if (workdir / "spool").exists() else True
    assert not (workdir / "staging").exists() or not any((workdir / "staging").iterdir())


def test_a_placeholder_typo_is_refused_by_check_and_by_run_before_attesting(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    _edit(job.config, '"{engine}"', '"{enigne}"')
    _refused_by_both(job.config, "run.command[1]: unknown placeholder '{enigne}'; expected one of {engine}")


def test_a_dataset_placeholder_must_name_a_configured_dataset(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    _edit(job.config, '"{engine}"', '"{engine}", "{dataset:labs}"')
    cfg = load_config(job.config)
    with pytest.raises(ConfigError, match=r"run.command\[2\]: unknown placeholder '\{dataset:labs\}'.*lab"):
        preflight_mod.preflight(cfg)


def test_an_unwritable_spool_is_refused_naming_the_key(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    (job.workdir / "blocker").write_text("a file where a directory should be")
    _edit(job.config, 'spool_dir = "spool"', 'spool_dir = "blocker/spool"')
    _refused_by_both(job.config, "spool_dir: expected a directory")


def test_a_readable_account_key_is_refused_by_check_as_by_run(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    key = job.workdir / "operator.key"
    key.write_text("11" * 32 + "\n")
    key.chmod(0o644)
    job.config.write_text(
        job.config.read_text()
        + '\n[publish.evm]\nrpc_url = "http://127.0.0.1:9"\n'
        + 'contract = "0x0000000000000000000000000000000000000001"\naccount_key_file = "operator.key"\n'
    )
    _refused_by_both(job.config, "publish.evm.account_key_file: ")
    check = _cli("config", "check", job.config)
    assert "expected mode 0600 or stricter, found 0644" in check.stderr
    assert "11" * 32 not in check.stderr


def test_a_missing_extra_names_the_module_and_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    cfg = load_config(job.config)
    monkeypatch.setitem(preflight_mod._EXTRAS, "publish.evm", ("chain", ("no_such_module_tl_test",)))
    with pytest.raises(
        ConfigError, match=r"publish.evm: needs no_such_module_tl_test, which is not installed"
    ):
        preflight_mod.require_extra(cfg, "publish.evm")


def test_a_broken_web3_install_names_the_missing_dependency(tmp_path: Path) -> None:
    """The case the issue saw: web3 present but its dependency missing, reported as such."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "web3.py").write_text("raise ImportError(\"No module named 'requests'\", name='requests')\n")
    job = make_job(tmp_path / "job", leaky=False)
    key = job.workdir / "operator.key"
    key.write_text("11" * 32 + "\n")
    key.chmod(0o600)
    job.config.write_text(
        job.config.read_text()
        + '\n[publish.evm]\nrpc_url = "http://127.0.0.1:9"\n'
        + 'contract = "0x0000000000000000000000000000000000000001"\naccount_key_file = "operator.key"\n'
    )
    done = _cli("config", "check", job.config, PYTHONPATH=f"{shadow}:{REPO}")
    assert done.returncode == 2
    assert "publish.evm: web3 is installed but cannot be imported (requests is missing)" in done.stderr


def test_missing_inputs_are_warnings_because_run_aborts_with_a_report(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    _edit(job.config, '"inputs/engine', '"inputs/no-engine')
    done = _cli("config", "check", job.config, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert any("inputs.engine" in w and "signed report" in w for w in doc["warnings"])
    assert "warning: " in done.stderr


def test_state_defaults_to_var_lib_not_beside_the_config(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    lines = job.config.read_text().splitlines()
    job.config.write_text(
        "\n".join(x for x in lines if not x.startswith(("staging_dir", "spool_dir", "output_dir")))
    )
    cfg = load_config(job.config)
    assert (cfg.staging_dir, cfg.spool_dir, cfg.output_dir) == (
        STATE_DIR / "staging",
        STATE_DIR / "spool",
        STATE_DIR / "output",
    )


def test_install_unit_warns_about_paths_the_sandbox_makes_read_only(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    _edit(job.config, 'output_dir = "output"', 'output_dir = "/srv/tl-not-created/output"')
    done = _cli("install-unit", "--prefix", tmp_path / "root", "--config", job.config)
    assert done.returncode == 0, done.stderr
    name = job.config.resolve()
    assert f"warning: {name}: spool_dir: {job.workdir}/spool is in the unit's private /tmp" in done.stderr
    assert (
        f"warning: {name}: output_dir: /srv/tl-not-created/output is read-only under the unit's "
        "ProtectSystem=strict" in done.stderr
    )
    assert not Path("/srv/tl-not-created").exists()


def test_a_state_dir_on_a_read_only_file_system_is_refused_as_such(tmp_path: Path) -> None:
    """What the unit's ProtectSystem=strict does to /etc, played for real: a read-only mount
    (in a private mount namespace) under the spool directory."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a private read-only mount")
    job = make_job(tmp_path / "job", leaky=False)
    ro = job.workdir / "ro"
    ro.mkdir()
    _edit(job.config, 'spool_dir = "spool"', 'spool_dir = "ro/spool"')
    script = (
        f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))} && "
        f"exec {shlex.quote(sys.executable)} -m loader config check {shlex.quote(str(job.config))}"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        cwd=REPO,
        env=loader_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "mount:" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"no private mount here: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    assert f"{job.config.resolve()}: spool_dir: {ro} is not writable (read-only file system)" in done.stderr


def test_a_dangling_symlink_in_a_state_path_is_refused(tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", leaky=False)
    (job.workdir / "gone").symlink_to(tmp_path / "nowhere")
    # absolute paths are taken as written (relative ones are resolved), so the link stays
    _edit(job.config, 'output_dir = "output"', f'output_dir = "{job.workdir}/gone/output"')
    with pytest.raises(ConfigError, match=r"output_dir: .*gone: a dangling symbolic link"):
        preflight_mod.preflight(load_config(job.config))
