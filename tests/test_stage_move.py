"""Staging by move (loader/boot/move.py), wiping by medium (loader/boot/stage.py, loader/boot/medium.py).

The attacker here is the engine's own unprivileged identity (a numeric uid with no entry,
64123) that wants to change an input after it was hashed, and whoever still holds the input's
original path. Tests run as root, as the loader does.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from loader.boot.config import load_config
from loader.boot.sequence import boot
from loader.boot.stage import InputSpec, make_private_dir, stage_input, wipe
from loader.errors import ConfigError, InputError
from loader.report.document import parse_report
from loader.report.show import render_text

ENGINE_UID = 64123
SHM = Path("/dev/shm")


def _staging(tmp_path: Path) -> Path:
    return make_private_dir(tmp_path / "staging" / f"job-{secrets.token_hex(4)}")


def _tree(root: Path) -> Path:
    (root / "shards").mkdir(parents=True)
    for i in range(3):
        (root / "shards" / f"part-{i}.bin").write_bytes(secrets.token_bytes(4096))
    (root / "index.json").write_text('{"parts": 3}\n')
    return root


def _move(path: Path, staging: Path, role: str = "dataset", name: str = "weights"):  # type: ignore[no-untyped-def]
    return stage_input(InputSpec(role, name, path, staging="move"), staging)


def _attempt(done: list[str], name: str, fn: Callable[[], object]) -> None:
    try:
        fn()
        done.append(name)
    except OSError:
        pass


def _attack(staged: Path, *, handed: bool) -> list[str]:
    """As the engine's uid (forked, no groups): every change it tries on the staged input.
    handed: it starts inside the staged directory (as if given a path to it), else it must find
    it by its absolute path. Returns the names of the operations that succeeded."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the engine's identity, try, report, exit
        done: list[str] = []
        try:
            os.close(read_end)
            root = Path(".") if handed else staged
            if handed:
                os.chdir(staged)
            os.setgroups([])
            os.setgid(ENGINE_UID)
            os.setuid(ENGINE_UID)
            f = root / "shards" / "part-0.bin"
            _attempt(done, "read", lambda: f.read_bytes())
            _attempt(done, "write", lambda: os.open(f, os.O_WRONLY))
            _attempt(done, "truncate", lambda: os.truncate(f, 0))
            _attempt(done, "chmod", lambda: os.chmod(f, 0o666))
            _attempt(done, "unlink", lambda: os.unlink(f))
            _attempt(done, "rename", lambda: os.rename(f, root / "renamed"))
            _attempt(
                done, "create", lambda: os.open(root / "shards" / "new", os.O_CREAT | os.O_WRONLY, 0o600)
            )
            _attempt(done, "mkdir", lambda: os.mkdir(root / "extra"))
            os.write(write_end, ",".join(done).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    assert os.getuid() == 0
    return [x for x in out.split(",") if x]


def test_moved_tree_is_hashed_in_staging_sealed_and_gone_from_its_path(tmp_path: Path) -> None:
    src = _tree(tmp_path / "private" / "weights")
    expected = hashlib.sha256((src / "index.json").read_bytes()).hexdigest()
    staging = _staging(tmp_path)
    m = _move(src, staging)
    assert not os.path.lexists(src), "the original path must no longer lead to the input"
    assert m.staged == staging / "dataset" / "weights"
    assert m.digest.files == 4 and m.digest.kind == "directory"
    assert hashlib.sha256((m.staged / "index.json").read_bytes()).hexdigest() == expected
    for dirpath, _, filenames in os.walk(m.staged):
        assert os.stat(dirpath).st_mode & 0o777 == 0o555 and os.stat(dirpath).st_uid == os.geteuid()
        for name in filenames:
            st = os.stat(Path(dirpath) / name)
            assert st.st_mode & 0o777 == 0o444 and st.st_uid == os.geteuid()
    # A new file at the old path is not the staged input.
    _tree(src)
    assert (m.staged / "shards" / "part-0.bin").read_bytes() != (src / "shards" / "part-0.bin").read_bytes()


def test_the_engine_uid_cannot_change_a_moved_input(tmp_path: Path) -> None:
    src = _tree(tmp_path / "private" / "weights")
    staging = _staging(tmp_path)
    m = _move(src, staging)
    before = {p: p.read_bytes() for p in m.staged.rglob("*") if p.is_file()}
    # By default the engine cannot even reach it (the staging directory is 0700).
    assert _attack(m.staged, handed=False) == []
    # Handed the input (as the runner gives the engine its inputs), it may read and nothing else.
    assert _attack(m.staged, handed=True) == ["read"]
    assert {p: p.read_bytes() for p in m.staged.rglob("*") if p.is_file()} == before


def test_a_moved_executable_stays_executable_and_read_only(tmp_path: Path) -> None:
    src = tmp_path / "private" / "engine"
    src.parent.mkdir()
    src.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(src, 0o700)
    m = _move(src, _staging(tmp_path), role="engine", name="engine")
    assert os.stat(m.staged).st_mode & 0o777 == 0o555 and m.digest.kind == "file"


def _refused(src: Path, tmp_path: Path, found: str) -> None:
    listing = sorted(str(p.relative_to(src)) for p in src.rglob("*")) if src.is_dir() else None
    with pytest.raises(InputError, match=found):
        _move(src, _staging(tmp_path))
    assert os.path.lexists(src), "a refused input stays where it was"
    if listing is not None:
        assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == listing


def test_move_refuses_a_foreign_owned_input_and_leaves_it(tmp_path: Path) -> None:
    src = _tree(tmp_path / "host" / "weights")
    os.chown(src / "shards" / "part-1.bin", ENGINE_UID, ENGINE_UID)
    _refused(src, tmp_path, f"owner uid {ENGINE_UID}")
    os.chown(src / "shards" / "part-1.bin", 0, 0)
    os.chown(src, 1000, 1000)
    _refused(src, tmp_path, "owner uid 1000")


@pytest.mark.parametrize("defect", ["group-writable", "hard link", "symlink", "fifo"])
def test_move_refuses_what_another_party_could_still_reach(tmp_path: Path, defect: str) -> None:
    src = _tree(tmp_path / "private" / "weights")
    part = src / "shards" / "part-2.bin"
    if defect == "group-writable":
        os.chmod(part, 0o664)
        found = "writable by group or others"
    elif defect == "hard link":
        os.link(part, tmp_path / "private" / "second-name")
        found = "2 hard links"
    elif defect == "symlink":
        (src / "link").symlink_to("/etc/passwd")
        found = "a symbolic link"
    else:
        os.mkfifo(src / "pipe")
        found = "a special file"
    _refused(src, tmp_path, found)


def test_move_refuses_another_file_system(tmp_path: Path) -> None:
    if not SHM.is_dir() or os.stat(SHM).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's temporary directory")
    src = SHM / f"tl-test-{secrets.token_hex(6)}"
    try:
        _tree(src)
        _refused(src, tmp_path, "staging directory's file system")
    finally:
        shutil.rmtree(src, ignore_errors=True)


def test_move_refuses_an_oci_image(tmp_path: Path) -> None:
    src = tmp_path / "private" / "image"
    src.mkdir(parents=True)
    (src / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with pytest.raises(InputError, match="OCI image"):
        stage_input(InputSpec("engine", "engine", src, format="oci", staging="move"), _staging(tmp_path))
    assert src.is_dir()


# ---- wiping by medium ---------------------------------------------------------------------------


def _staged_file(root: Path) -> tuple[Path, int]:
    """A staged tree with one file held open, to see afterwards what the wipe did to its bytes."""
    root.mkdir(parents=True)
    (root / "a").write_bytes(b"secret" * 100)
    (root / "b").write_bytes(b"more")
    return root, os.open(root / "a", os.O_RDONLY)


def _after(fd: int) -> bytes:
    try:
        return os.pread(fd, 600, 0)
    finally:
        os.close(fd)


def test_wipe_overwrites_disk_staging_under_auto(tmp_path: Path) -> None:
    root, fd = _staged_file(tmp_path / "staging")
    record = wipe(root)
    assert record == {
        "files": 2,
        "overwritten": 2,
        "method": "overwrite",
        "requested": "auto",
        "medium": "ext4",
    }
    assert _after(fd) == bytes(600) and not root.exists()


def test_wipe_unlinks_memory_staging_under_auto_and_as_configured(tmp_path: Path) -> None:
    if not SHM.is_dir():
        pytest.skip("needs /dev/shm")
    root, fd = _staged_file(SHM / f"tl-test-{secrets.token_hex(6)}")
    try:
        record = wipe(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert record == {
        "files": 2,
        "overwritten": 0,
        "method": "unlink",
        "requested": "auto",
        "medium": "tmpfs",
    }
    assert _after(fd) == b"secret" * 100 and not root.exists()  # released, not overwritten
    root, fd = _staged_file(tmp_path / "encrypted-staging")
    assert wipe(root, "unlink")["method"] == "unlink"
    assert _after(fd) == b"secret" * 100


def test_wipe_overwrites_memory_staging_when_configured(tmp_path: Path) -> None:
    if not SHM.is_dir():
        pytest.skip("needs /dev/shm")
    root, fd = _staged_file(SHM / f"tl-test-{secrets.token_hex(6)}")
    try:
        record = wipe(root, "overwrite")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert record["method"] == "overwrite" and record["medium"] == "tmpfs" and record["overwritten"] == 2
    assert _after(fd) == bytes(600)


# ---- configuration and report ---------------------------------------------------------------------


def _with_staging(demo_dir: Path, section: str) -> Path:
    config = demo_dir / "loader.toml"
    config.write_text(config.read_text() + "\n" + section)
    return config


def test_configuration_names_inputs_and_refuses_unknown_ones(demo_dir: Path) -> None:
    text = (demo_dir / "loader.toml").read_text()
    cfg = load_config(
        _with_staging(demo_dir, '[staging]\nwipe = "unlink"\n[staging.inputs]\n"dataset:lab" = "move"\n')
    )
    assert {(s.role, s.name): s.staging for s in cfg.inputs}[("dataset", "lab")] == "move"
    assert {s.staging for s in cfg.inputs if s.name != "lab"} == {"copy"} and cfg.wipe == "unlink"
    for bad, message in (
        ('[staging.inputs]\n"dataset:nope" = "move"\n', "not an input"),
        ('[staging]\nmode = "link"\n', "expected one of"),
        ('[staging]\nwipe = "shred"\n', "expected one of"),
        ('[staging.inputs]\nengine = "rename"\n', "expected one of"),
    ):
        (demo_dir / "loader.toml").write_text(text + "\n" + bad)
        with pytest.raises(ConfigError, match=message):
            load_config(demo_dir / "loader.toml")


def test_a_moved_run_records_staging_and_wipe_in_the_report(demo_dir: Path) -> None:
    lab = demo_dir / "inputs" / "datasets" / "lab"
    config = _with_staging(demo_dir, '[staging]\nmode = "move"\nwipe = "overwrite"\n')
    outcome = boot(load_config(config), report_out=demo_dir / "report.cbor")
    assert outcome.exit_code == 0, outcome.reasons
    assert not lab.exists(), "moved inputs are consumed"
    payload = parse_report(outcome.report).payload
    assert {i["staging"] for i in payload["inputs"]} == {"move"}
    assert payload["wipe"]["method"] == "overwrite" and payload["wipe"]["requested"] == "overwrite"
    assert payload["wipe"]["medium"] == "ext4" and payload["wipe"]["overwritten"] == payload["wipe"]["files"]
    text = " ".join(render_text(parse_report(outcome.report)).split())  # long values wrap at 80 columns
    assert "moved into staging" in text and "by overwrite on ext4 (configured overwrite)" in text
    shown = json.loads(
        subprocess.run(
            [sys.executable, "-m", "loader", "report", "show", str(demo_dir / "report.cbor"), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert shown["wipe"]["method"] == "overwrite"


def test_a_foreign_owned_input_aborts_a_moved_run(demo_dir: Path) -> None:
    lab = demo_dir / "inputs" / "datasets" / "lab"
    os.chown(next(lab.glob("*.csv")), ENGINE_UID, ENGINE_UID)
    config = _with_staging(demo_dir, '[staging.inputs]\n"dataset:lab" = "move"\n')
    outcome = boot(load_config(config))
    assert outcome.verdict == "abort"
    assert any("owner uid 64123" in r for r in outcome.reasons), outcome.reasons
    assert lab.is_dir() and any(lab.glob("*.csv"))


def test_wipe_falls_back_to_overwrite_when_unsure(tmp_path: Path) -> None:
    root, fd = _staged_file(tmp_path / "staging")
    record = wipe(root, "shred")
    assert record["method"] == "overwrite" and record["overwritten"] == 2 and not root.exists()
    assert _after(fd) == bytes(600)


def test_an_input_the_digest_refuses_is_put_back(tmp_path: Path) -> None:
    src = tmp_path / "private" / "weights"
    src.mkdir(parents=True)
    (src / "bad\\name").write_text("x")  # sha256sum would escape the name: refused by the digest
    with pytest.raises(InputError, match="name"):
        _move(src, _staging(tmp_path))
    assert (src / "bad\\name").read_text() == "x"
