"""Benchmark `trusted-loader digest` against `openssl dgst -sha256` on this machine, in one run.

    python bench/bench_digest.py [--file-gib 2] [--files 64] [--file-mib 16] [--repeats 5]

Creates (then deletes) a large random file and a directory of many files in a temporary
directory, warms the page cache, then times each command as a child process (start-up
included) and reads the child's peak RSS from wait4(). Ratios are speeds relative to openssl
(>1 is faster): "file" against `openssl dgst -sha256 FILE`, "directory" against one openssl
process hashing the files one after another. Medians of --repeats runs are printed, with the
load average, because shared machines are noisy. Exit status 1 if a digest disagrees with
openssl/coreutils or a target is missed (--check).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_FILE, TARGET_DIR, TARGET_RSS_MB = 0.9, 1.5, 150


def write_random(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            # vary the content so no two MiB are equal
            block = hashlib.sha256(block[:32]).digest() + block[32:]
            left -= n


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, bytes]:
    """Wall seconds, peak RSS (MB) and stdout of one child process.

    Linux carries the forking process's RSS high-water mark across exec, so a child forked
    from this (larger) Python process would report at least our size. GNU time, when present,
    is a small C parent that reports the workload's own peak; else wait4() is used (an upper
    bound).
    """
    gnu_time = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r") as rss_file:
        wrapped = [str(gnu_time), "-f", "%M", "-o", rss_file.name, *argv] if gnu_time.exists() else argv
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out = proc.stdout.read() if proc.stdout else b""
        err = proc.stderr.read() if proc.stderr else b""
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode(errors='replace')}")
        kib = int(rss_file.read().split()[-1]) if gnu_time.exists() else usage.ru_maxrss
    return seconds, kib / 1024, out


def loader_argv(path: Path) -> list[str]:
    exe = shutil.which("trusted-loader")
    if exe and not os.environ.get("BENCH_FROM_SOURCE"):
        return [exe, "digest", str(path)]
    return [sys.executable, "-m", "loader", "digest", str(path)]


def warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


def bench(name: str, ours: list[str], theirs: list[str], repeats: int, env: dict[str, str]):
    rows = []
    for _ in range(repeats):
        t_openssl, rss_openssl, out_openssl = timed(theirs, env)
        t_loader, rss_loader, out_loader = timed(ours, env)
        rows.append((t_openssl, t_loader, rss_openssl, rss_loader))
    t_o = statistics.median(r[0] for r in rows)
    t_l = statistics.median(r[1] for r in rows)
    rss = max(r[3] for r in rows)
    ratio = t_o / t_l
    print(
        f"{name:9s} openssl {t_o:7.3f} s  trusted-loader {t_l:7.3f} s  speed ratio {ratio:5.2f}x  "
        f"peak RSS {rss:6.1f} MB (openssl {max(r[2] for r in rows):.1f} MB)  "
        f"runs: {', '.join(f'{r[0]:.2f}/{r[1]:.2f}' for r in rows)}"
    )
    return ratio, rss, out_openssl, out_loader


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file-gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--file-mib", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tmp", type=Path, default=None, help="where to create the test data")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args()
    if not shutil.which("openssl"):
        raise SystemExit("openssl not found")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C"}
    work = Path(tempfile.mkdtemp(prefix="tl-bench-", dir=args.tmp))
    try:
        big = work / "big.bin"
        write_random(big, int(args.file_gib * (1 << 30)))
        tree = work / "tree"
        tree.mkdir()
        files = []
        for i in range(args.files):
            files.append(tree / f"part-{i:03d}.bin")
            write_random(files[-1], args.file_mib << 20)
        warm([big, *files])
        print(
            f"cpus {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}, "
            f"file {args.file_gib} GiB, directory {args.files} x {args.file_mib} MiB, "
            f"median of {args.repeats}"
        )
        ok = True
        r_file, rss_file, o_out, l_out = bench(
            "file", loader_argv(big), ["openssl", "dgst", "-sha256", "-r", str(big)], args.repeats, env
        )
        ok &= l_out.split()[0].decode() == "sha256:" + o_out.split()[0].decode()
        sorted_files = sorted(files, key=lambda p: os.fsencode(p.name))
        r_dir, rss_dir, o_out, l_out = bench(
            "directory",
            loader_argv(tree),
            ["openssl", "dgst", "-sha256", "-r", *map(str, sorted_files)],
            args.repeats,
            env,
        )
        listing = b"".join(
            line.split()[0] + b"  ./" + Path(line.split()[1].lstrip(b"*").decode()).name.encode() + b"\n"
            for line in o_out.splitlines()
        )
        ok &= l_out.split()[0].decode() == "sha256:" + hashlib.sha256(listing).hexdigest()
        print(f"digests agree with openssl: {'yes' if ok else 'NO'}")
        met = r_file >= TARGET_FILE and r_dir >= TARGET_DIR and max(rss_file, rss_dir) < TARGET_RSS_MB
        print(
            f"targets (file >= {TARGET_FILE}x, directory >= {TARGET_DIR}x, RSS < {TARGET_RSS_MB} MB): "
            f"{'met' if met else 'MISSED'}"
        )
        return 0 if ok and (met or not args.check) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
