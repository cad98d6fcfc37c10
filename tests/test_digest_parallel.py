"""File and directory digests: equal to coreutils, the same with any number of threads, staged
copies identical to what was hashed, refusals intact, errors propagated from worker threads."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.boot.stage import InputSpec, stage_input
from loader.errors import InputError
from loader.measure import digest as dg
from loader.measure.digest import digest_path, measure_tree
from loader.measure.progress import Progress, estimate_size, for_terminal, format_line, human_bytes

needs_coreutils = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("find", "sort", "xargs", "sha256sum")), reason="coreutils absent"
)


def coreutils_dir(path: Path) -> str:
    text = subprocess.run(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum",
        shell=True,
        cwd=path,
        check=True,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "LC_ALL": "C"},
    ).stdout
    return "sha256:" + hashlib.sha256(text).hexdigest()


def sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True).stdout
    return "sha256:" + out.split()[0].decode()


def build_tree(root: Path) -> None:
    """Unicode names, empty files, nested and sibling directories, names that sort tricky in C."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "été").mkdir()
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(3 * dg.CHUNK + 17))
    (root / "a" / "empty").write_bytes(b"")
    (root / "été" / "naïve 文字.txt").write_text("unicode\n")
    (root / "a-b").write_bytes(b"dash sorts before slash")
    (root / "a.b").write_bytes(b"dot")
    (root / "Z").write_bytes(b"upper case first in C order")
    (root / "sp ace").write_bytes(b" ")
    for i in range(40):
        (root / "many" / f"{i % 7}").mkdir(parents=True, exist_ok=True)
        (root / "many" / f"{i % 7}" / f"f{i:03d}").write_bytes(os.urandom(i * 1000))


@needs_coreutils
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_directory_digest_equals_coreutils_pipeline(tmp_path: Path, workers: int) -> None:
    build_tree(tmp_path)
    d = digest_path(tmp_path, workers=workers)
    assert d.digest == coreutils_dir(tmp_path)
    assert d.kind == "directory"
    assert d.files == sum(len(f) for _, _, f in os.walk(tmp_path))
    assert d.size == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())


@needs_coreutils
@pytest.mark.parametrize("size", [0, 1, dg.CHUNK - 1, dg.CHUNK, dg.CHUNK + 1, 5 * dg.CHUNK + 3])
def test_file_digest_equals_sha256sum_at_chunk_boundaries(tmp_path: Path, size: int) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(size))
    d = digest_path(f)
    assert (d.digest, d.size, d.kind) == (sha256sum(f), size, "file")


@needs_coreutils
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.dictionaries(
        st.lists(
            st.text(
                st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
                min_size=1,
                max_size=8,
            ).filter(lambda s: s not in (".", "..")),
            min_size=1,
            max_size=3,
        ).map(tuple),
        st.binary(max_size=300),
        min_size=1,
        max_size=12,
    ),
    workers=st.integers(1, 4),
)
def test_random_trees_match_coreutils(tmp_path_factory: pytest.TempPathFactory, files, workers) -> None:
    root = tmp_path_factory.mktemp("tree")
    written = 0
    for parts, data in files.items():
        target = root.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                continue
            target.write_bytes(data)
            written += 1
        except (FileExistsError, NotADirectoryError, IsADirectoryError, OSError):
            continue  # a path that is a file in one entry and a directory in another
    if not written:
        return
    assert digest_path(root, workers=workers).digest == coreutils_dir(root)


def test_thread_count_does_not_change_digest_and_serial_is_used_for_one(tmp_path: Path) -> None:
    build_tree(tmp_path)
    digests = {digest_path(tmp_path, workers=w).digest for w in (1, 2, 5)}
    assert len(digests) == 1


def test_pool_really_hashes_two_files_at_once(tmp_path: Path) -> None:
    """The first two jobs wait for each other: only concurrent workers get past the barrier."""
    for i in range(16):
        (tmp_path / f"f{i}").write_bytes(b"x" * 10)
    barrier = threading.Barrier(2, timeout=5)
    calls = iter(range(1000))
    names: set[str] = set()

    def job(relpath: bytes, fd: int) -> tuple[bytes, int]:
        names.add(threading.current_thread().name)
        if next(calls) < 2:
            barrier.wait()
        return dg.hash_fd(fd)

    measure_tree(tmp_path, job, workers=2)
    assert len(names) == 2


def test_worker_error_propagates_and_no_descriptor_leaks(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i:02d}").write_bytes(b"data")
    before = len(os.listdir("/proc/self/fd"))

    def job(relpath: bytes, fd: int) -> tuple[bytes, int]:
        if relpath == b"./f17":
            raise InputError("boom on f17")
        return dg.hash_fd(fd)

    with pytest.raises(InputError, match="boom on f17"):
        measure_tree(tmp_path, job, workers=3)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("workers", [1, 4])
def test_symlink_inside_tree_is_refused(tmp_path: Path, workers: int) -> None:
    (tmp_path / "ok").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("/etc/hostname")
    with pytest.raises(InputError, match="symbolic link"):
        digest_path(tmp_path, workers=workers)


@pytest.mark.parametrize("workers", [1, 4])
def test_fifo_and_escaped_names_are_refused(tmp_path: Path, workers: int) -> None:
    (tmp_path / "ok").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="fifo"):
        digest_path(tmp_path, workers=workers)
    os.unlink(tmp_path / "pipe")
    (tmp_path / "new\nline").write_bytes(b"x")
    with pytest.raises(InputError, match="sha256sum would escape"):
        digest_path(tmp_path, workers=workers)


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "only-dirs" / "x").mkdir(parents=True)
    with pytest.raises(InputError, match="no regular file"):
        digest_path(tmp_path, workers=2)


@needs_coreutils
@pytest.mark.parametrize("workers", [1, 3])
def test_staged_tree_is_byte_identical_and_digest_matches(tmp_path: Path, workers: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    (src / "run.sh").write_bytes(b"#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    m = stage_input(InputSpec("dataset", "d", src), tmp_path / "staging", workers=workers)
    assert m.digest.digest == coreutils_dir(src) == coreutils_dir(m.staged)
    for p in src.rglob("*"):
        staged = m.staged / p.relative_to(src)
        if p.is_file():
            assert staged.read_bytes() == p.read_bytes()
            assert staged.stat().st_mode & 0o777 == 0o400  # normalised: a dataset runs nothing
    engine = stage_input(InputSpec("engine", "engine", src), tmp_path / "staging2", workers=workers)
    assert engine.digest.digest == m.digest.digest
    assert {f.stat().st_mode & 0o777 for f in engine.staged.rglob("*") if f.is_file()} == {0o500}


def test_staged_file_counts_bytes_in_meter(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(3 * dg.CHUNK + 5))
    meter = Progress()
    m = stage_input(InputSpec("config", "config", f), tmp_path / "staging", meter=meter)
    assert meter.done == m.digest.size == f.stat().st_size
    assert m.staged.read_bytes() == f.read_bytes()


def test_meter_is_exact_across_threads(tmp_path: Path) -> None:
    build_tree(tmp_path)
    meter = Progress()
    d = digest_path(tmp_path, workers=4, meter=meter)
    assert meter.done == d.size


def test_hash_stream_stops_at_limit() -> None:
    data = os.urandom(dg.CHUNK * 2 + 9)
    raw, n = dg.hash_stream(io.BytesIO(data), limit=dg.CHUNK + 1)
    assert (raw, n) == (hashlib.sha256(data[: dg.CHUNK + 1]).digest(), dg.CHUNK + 1)


def test_default_workers_is_bounded() -> None:
    assert 1 <= dg.default_workers() <= dg.MAX_WORKERS


# --- progress -------------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    p = for_terminal(100, stream=stream)
    p.add(50)
    p.finish()
    assert stream.getvalue() == "" and p.done == 50


def test_progress_draws_bytes_rate_and_time_left_on_a_terminal() -> None:
    now = [0.0]
    stream = FakeTTY()
    p = Progress(4 << 30, stream=stream, clock=lambda: now[0])
    now[0] = 2.0
    p.add(1 << 30)
    p.finish()
    out = stream.getvalue()
    assert "1.0 GiB of 4.0 GiB (25%)" in out
    assert "512.0 MiB/s" in out
    assert "0:06 left" in out
    assert out.endswith("\n")


def test_for_terminal_uses_a_tty_stream() -> None:
    stream = FakeTTY()
    p = for_terminal(None, stream=stream)
    assert p.stream is stream


def test_format_line_without_total_has_no_eta() -> None:
    line = format_line("hashing", 3 << 20, None, 1.0)
    assert line == "hashing 3.0 MiB, 3.0 MiB/s"
    assert human_bytes(512) == "512 B"


def test_estimate_size(tmp_path: Path) -> None:
    build_tree(tmp_path)
    assert estimate_size(tmp_path) == digest_path(tmp_path).size
    assert estimate_size(tmp_path / "missing") is None


# --- bounded memory ------------------------------------------------------------------------------

GNU_TIME = Path("/usr/bin/time")


@pytest.mark.skipif(not GNU_TIME.exists(), reason="GNU time absent (apt-get install -y time)")
def test_peak_memory_stays_bounded_for_large_inputs(tmp_path: Path) -> None:
    """768 MiB of sparse files (no disk used): peak RSS of `digest` stays far below 150 MB,
    and far below the input size, for one file and for a directory hashed in parallel."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(512 << 20)
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(4):
        with open(tree / f"p{i}", "wb") as f:
            f.truncate(64 << 20)
    from tests.conftest import REPO

    for target in (big, tree):
        rss = tmp_path / "rss"
        done = subprocess.run(
            [
                str(GNU_TIME),
                "-f",
                "%M",
                "-o",
                str(rss),
                sys.executable,
                "-m",
                "loader",
                "digest",
                str(target),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == digest_path(target).digest
        peak_mb = int(rss.read_text().split()[-1]) / 1024
        assert peak_mb < 100, f"peak RSS {peak_mb:.1f} MB hashing {target}"
