"""Issuance throughput of the CA with mock evidence, on loopback.

Starts `ca serve` (a separate process, as in production) on a fresh CA made with --allow-mock,
then measures, for 1 client and for 4 clients (separate processes):

  * issue:      POST /v1/certificates only, requests prepared beforehand, one keep-alive
                connection per client: what the CA itself sustains;
  * end-to-end: loader.boot.enroll.enroll() as the loader runs it (GET nonce, mock evidence, CSR,
                POST over urllib, check of the returned chain): what a fleet of CVMs sees.

Usage: PYTHONPATH=. python bench/bench_ca.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from certs.ca import wire  # noqa: E402
from certs.csr import build_csr  # noqa: E402
from loader.boot.enroll import enroll  # noqa: E402
from tests.ca_helpers import Cvm  # noqa: E402

# Throughput from one address: lift the per-client rate limit (bench_ca_abuse.py keeps it).
UNLIMITED = ("--rate", "1000000", "--burst", "1000000")


def start_ca(workdir: Path, extra: tuple[str, ...] = UNLIMITED) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ca_dir = workdir / "ca"
    subprocess.run(
        [sys.executable, "-m", "certs.ca.cli", "ca", "init", "--dir", str(ca_dir), "--allow-mock"],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "certs.ca.cli",
            "ca",
            "serve",
            "--dir",
            str(ca_dir),
            "--listen",
            "127.0.0.1:0",
            *extra,
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for _ in range(200):
        line = proc.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            # keep draining the server's log so it never blocks on a full pipe
            import threading

            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, match.group(1)
    proc.kill()
    raise SystemExit("ca serve did not start")


def _issue_only(url: str, count: int, barrier) -> tuple[int, float]:
    cvm = Cvm.new()
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    bodies = []
    for _ in range(count):
        conn.request("GET", "/v1/nonce")
        nonce = wire.b64decode(json.loads(conn.getresponse().read())["nonce"], "nonce")
        doc = wire.encode_request(build_csr(cvm.key), nonce, [cvm.evidence(nonce)])
        bodies.append(json.dumps(doc).encode())
    barrier.wait()
    start = time.perf_counter()
    ok = 0
    for body in bodies:
        conn.request("POST", "/v1/certificates", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        ok += resp.status == 201
    return ok, time.perf_counter() - start


def _end_to_end(url: str, count: int, barrier) -> tuple[int, float]:
    cvm = Cvm.new()
    barrier.wait()
    start = time.perf_counter()
    ok = 0
    for _ in range(count):
        enroll(url, cvm.key, lambda nonce: [cvm.evidence(nonce)], attempts=1)
        ok += 1
    return ok, time.perf_counter() - start


def run(url: str, mode: str, clients: int, per_client: int) -> dict[str, float]:
    target = _issue_only if mode == "issue" else _end_to_end
    with multiprocessing.Manager() as manager:
        barrier = manager.Barrier(clients + 1)
        with multiprocessing.Pool(clients) as pool:
            pending = pool.starmap_async(target, [(url, per_client, barrier)] * clients)
            barrier.wait()
            start = time.perf_counter()
            results = pending.get(timeout=600)
            wall = time.perf_counter() - start
    ok = sum(r[0] for r in results)
    return {
        "mode": mode,
        "clients": clients,
        "requests": clients * per_client,
        "issued": ok,
        "seconds": round(wall, 3),
        "per_second": round(ok / wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per run, split over the clients")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_ca(Path(tmp))
        try:
            rows = [
                run(url, mode, clients, max(1, args.requests // clients))
                for mode in ("issue", "end-to-end")
                for clients in (1, 4)
            ]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "python": sys.version.split()[0], "rows": rows}, indent=2))
    else:
        print(
            f"CA issuance with mock evidence, loopback, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}"
        )
        print("| mode | clients | requests | seconds | certificates/s |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['mode']} | {r['clients']} | {r['issued']}/{r['requests']} "
                f"| {r['seconds']} | {r['per_second']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
