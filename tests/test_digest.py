"""Digests equal what coreutils prints, and unsafe trees are refused with a clear error."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.boot.stage import InputSpec, stage_input
from loader.errors import InputError
from loader.measure.digest import digest_path


def coreutils_dir_digest(path: Path) -> str:
    out = subprocess.run(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum",
        shell=True,
        cwd=path,
        capture_output=True,
        check=True,
    ).stdout
    return "sha256:" + out.split()[0].decode()


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, check=True).stdout
    return "sha256:" + out.split()[0].decode()


def make_tree(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "deep.csv").write_text("x,y\n1,2\n")
    (root / "a-b").write_bytes(b"sorts before a/ in C order")
    (root / "empty").write_bytes(b"")
    (root / "données é.csv").write_text("unicode name\n")
    (root / "日本").mkdir()
    (root / "日本" / "データ.txt").write_bytes(os.urandom(3000))
    (root / ".hidden").write_bytes(b"hidden files are measured too")


def test_file_digest_equals_sha256sum(tmp_path: Path) -> None:
    f = tmp_path / "blob.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    assert digest_path(f).digest == sha256sum(f)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert digest_path(empty).digest == sha256sum(empty)


def test_directory_digest_equals_coreutils_pipeline(tmp_path: Path) -> None:
    make_tree(tmp_path)
    d = digest_path(tmp_path)
    assert d.kind == "directory"
    assert d.files == 6
    assert d.digest == coreutils_dir_digest(tmp_path)


def test_staged_copy_has_same_digest_and_bytes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    m = stage_input(InputSpec("dataset", "lab", src), tmp_path / "staging")
    assert m.digest.digest == coreutils_dir_digest(src) == coreutils_dir_digest(m.staged)
    assert (m.staged / "a" / "b" / "deep.csv").read_text() == "x,y\n1,2\n"
    assert not os.access(m.staged / "empty", os.W_OK) or os.geteuid() == 0
    assert (m.staged / "empty").stat().st_mode & 0o777 == 0o400


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\n\r\x00"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@settings(max_examples=25, deadline=None)
@given(files=st.dictionaries(names, st.binary(max_size=200), min_size=1, max_size=6))
def test_any_tree_matches_coreutils(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]
) -> None:
    root = tmp_path_factory.mktemp("tree")
    for i, (name, data) in enumerate(files.items()):
        target = root / ("sub" if i % 2 else "") / name
        target.parent.mkdir(exist_ok=True)
        try:
            target.write_bytes(data)
        except OSError:
            pytest.skip("file system refused the name")
    assert digest_path(root).digest == coreutils_dir_digest(root)


def test_symlink_inside_dataset_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.csv").write_text("a\n")
    (tmp_path / "data" / "escape").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match=r"data/escape: is a symbolic link"):
        digest_path(tmp_path / "data")


def test_symlinked_directory_escaping_root_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sub").symlink_to(outside)
    with pytest.raises(InputError, match="symbolic link"):
        stage_input(InputSpec("dataset", "lab", tmp_path / "data"), tmp_path / "staging")


def test_top_level_symlink_refused(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InputError, match=r"link: .*symbolic link"):
        digest_path(tmp_path / "link")


def test_fifo_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    os.mkfifo(tmp_path / "data" / "pipe")
    with pytest.raises(InputError, match="pipe: is a device, fifo or socket"):
        digest_path(tmp_path / "data")


def test_name_that_sha256sum_would_escape_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "line\nbreak").write_text("x")
    with pytest.raises(InputError, match="sha256sum would escape"):
        digest_path(tmp_path / "data")


def test_empty_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "data" / "only-dirs").mkdir(parents=True)
    with pytest.raises(InputError, match="holds no regular file"):
        digest_path(tmp_path / "data")


def test_missing_path_names_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope: cannot read: No such file"):
        digest_path(tmp_path / "nope")


def test_digest_cli(tmp_path: Path) -> None:
    from tests.conftest import cli

    f = tmp_path / "x"
    f.write_bytes(b"hello\n")
    res = cli("digest", f)
    assert res.returncode == 0
    assert res.stdout.strip() == "sha256:" + hashlib.sha256(b"hello\n").hexdigest()
    res = cli("digest", tmp_path / "missing")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "missing: cannot read" in res.stderr
