"""The whole load, run start to engine start, against parallel `openssl dgst` and `cp -r`.

    python bench/bench_load.py [--files 8] [--file-mib 512] [--repeats 3] [--dir DIR] [--check]

Builds an engine directory of FILES random shards of FILE-MIB MiB plus a small start script,
an approved list for it and a mock-TEE configuration, then times, with a warm page cache
(nothing here drops caches: the machine is shared) and no dirty pages (sync(2) before each
timed step, so one step's writeback does not slow the next):

- load, copy: `boot()` in this process with `[staging] mode = "copy"`, from the call until the
  engine's first statement (it writes time.time() into its output directory): configuration,
  key, mock attestation, certificate, approved list, staging (copy and hash in one pass),
  register extension, decision, engine start;
- load, move: the same with `mode = "move"`, from a fresh loader-owned copy of the engine made
  before the clock starts (a move consumes its input);
- parallel hashing: as many `openssl dgst -sha256` processes as this process may use CPUs,
  over the same files split between them;
- cp -r of the engine directory to a new directory on the staging file system.

Ratios: move / parallel hashing (target <= 1.25), copy / cp -r (target <= 1.1), and copy /
max(cp -r, parallel hashing), the floor of a pass that both copies and hashes. Also printed:
the time from engine start to the end of `boot()` (engine run, wipe, signing, storing), and the
wipe method used. Medians of --repeats runs, with the load average (shared machines are noisy).
--check: exit 1 when a target is missed. Staging and inputs live under --dir (default: a
temporary directory), which needs 3 x FILES x FILE-MIB of free space.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loader.boot.config import load_config  # noqa: E402
from loader.boot.sequence import boot  # noqa: E402
from loader.measure.digest import default_workers, digest_path  # noqa: E402

TARGET_MOVE, TARGET_COPY = 1.25, 1.1
START_SCRIPT = "import sys, time\nopen(sys.argv[1] + '/started', 'w').write(repr(time.time()))\n"


def write_shards(engine: Path, files: int, size: int) -> None:
    engine.mkdir(parents=True)
    (engine / "start.py").write_text(START_SCRIPT)
    block = bytearray(os.urandom(1 << 20))
    for i in range(files):
        with open(engine / f"shard-{i:03d}.bin", "wb") as f:
            for j in range(size >> 20):
                block[:8] = (i << 32 | j).to_bytes(8, "big")  # no two MiB alike
                f.write(block)


def write_job(work: Path, engine: Path, mode: str) -> Path:
    from loader.cli import demo

    command = [sys.executable, "{engine}/start.py", "{output}"]
    measured = digest_path(engine)
    policy = {
        "version": 2,
        "order": "bench-load",
        "engine": {"name": "bench-engine", "kind": measured.kind, "digest": measured.digest},
        "datasets": [],
        "run": demo.demo_run(command=command, timeout=600),
        "output": {"recipient": None},
        "tee": ["mock"],
    }
    (work / "approved.json").write_text(json.dumps(policy))
    config = work / f"loader-{mode}.toml"
    config.write_text(
        f"""tee = "mock"
job_id = "bench-{mode}"
staging_dir = "staging"
spool_dir = "spool"
output_dir = "output"

[policy]
path = "approved.json"

[inputs]
engine = "engine-{mode}"
engine_format = "plain"

[staging]
mode = "{mode}"

[run]
command = {json.dumps(command)}
timeout = 600
{demo.containment_keys()}"""
    )
    return config


def timed_load(config: Path) -> tuple[float, float, str]:
    """(seconds to engine start, seconds from engine start to the end of boot, wipe method)."""
    os.sync()
    start = time.time()
    outcome = boot(load_config(config))
    end = time.time()
    if outcome.exit_code != 0 or outcome.output_dir is None:
        raise SystemExit(f"{config.name}: the load did not run the engine: {outcome.reasons}")
    started = float((outcome.output_dir / "output" / "started").read_text())
    from loader.report.document import parse_report

    wipe = parse_report(outcome.report).payload["wipe"]
    return started - start, end - started, f"{wipe['method']} on {wipe['medium']}"


def timed(argv_list: list[list[str]]) -> float:
    os.sync()
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for argv in argv_list]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"{argv_list[0][0]} failed")
    return time.perf_counter() - start


def openssl_parallel(engine: Path) -> float:
    files = sorted(str(p) for p in engine.iterdir())
    workers = min(default_workers(), len(files))
    return timed([["openssl", "dgst", "-sha256", *files[i::workers]] for i in range(workers)])


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def run(base: Path, files: int, file_mib: int, repeats: int) -> tuple[float, float]:
    source = base / "source-engine"
    write_shards(source, files, file_mib << 20)
    copy_cfg = write_job(base, source, "copy")
    shutil.copytree(source, base / "engine-copy")
    move_cfg = write_job(base, source, "move")
    loads: dict[str, list[float]] = {"copy": [], "move": []}
    after: dict[str, list[float]] = {"copy": [], "move": []}
    wipes: dict[str, str] = {}
    hashing, copying = [], []
    for _ in range(repeats):
        hashing.append(openssl_parallel(source))
        target = base / "cp-target"
        copying.append(timed([["cp", "-r", str(source), str(target)]]))
        shutil.rmtree(target)
        load, rest, wipes["copy"] = timed_load(copy_cfg)
        loads["copy"].append(load)
        after["copy"].append(rest)
        subprocess.run(["cp", "-r", str(source), str(base / "engine-move")], check=True)
        load, rest, wipes["move"] = timed_load(move_cfg)
        loads["move"].append(load)
        after["move"].append(rest)
    total = files * file_mib
    print(f"engine: {files} x {file_mib} MiB ({total} MiB), {default_workers()} hashing threads/processes")
    print(f"parallel openssl dgst: {median(hashing):.2f} s   cp -r: {median(copying):.2f} s")
    for mode in ("copy", "move"):
        print(
            f"load ({mode}): {median(loads[mode]):.2f} s to engine start "
            f"(runs {', '.join(f'{s:.2f}' for s in loads[mode])}); "
            f"engine start to end of boot {median(after[mode]):.2f} s (wipe: {wipes[mode]})"
        )
    move_ratio = median(loads["move"]) / median(hashing)
    copy_ratio = median(loads["copy"]) / median(copying)
    move_each = sorted(m / h for m, h in zip(loads["move"], hashing, strict=True))
    copy_each = sorted(c / p for c, p in zip(loads["copy"], copying, strict=True))
    print(
        f"ratio move / parallel hashing: {move_ratio:.2f} of medians, "
        f"{move_each[0]:.2f}-{move_each[-1]:.2f} run by run (target <= {TARGET_MOVE})"
    )
    print(
        f"ratio copy / cp -r: {copy_ratio:.2f} of medians, "
        f"{copy_each[0]:.2f}-{copy_each[-1]:.2f} run by run (target <= {TARGET_COPY})"
    )
    floor = max(median(copying), median(hashing))
    print(
        f"ratio copy / max(cp -r, parallel hashing): {median(loads['copy']) / floor:.2f} "
        "(every byte is both copied and hashed: when the page cache makes cp -r faster than "
        "hashing, the hashing is the floor)"
    )
    return move_ratio, copy_ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where inputs and staging go")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench-load-", dir=args.dir) as tmp:
        move_ratio, copy_ratio = run(Path(tmp), args.files, args.file_mib, args.repeats)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    missed = move_ratio > TARGET_MOVE or copy_ratio > TARGET_COPY
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
