"""The CA under abuse, on loopback: honest CVMs enroll while abusive clients flood it.

Starts `ca serve` (its own process, default limits) on a fresh CA made with --allow-mock. Abusive
clients (threads, each from its own loopback address 127.0.2.N) send, as fast as they can, in
turn: garbage evidence under a genuine nonce, a `[0,0,...]` body just under the size limit, a
declared 64 MiB body, and non-JSON. Meanwhile honest CVMs (each from its own address 127.0.1.N)
enroll with mock evidence (nonce, evidence, CSR, POST). Bounded: `--honest` enrollments and a
`--max-seconds` cap; loopback only. Prints one JSON object; exits 1 when fewer than 99% of
honest enrollments succeed or their p99 latency exceeds `--p99`.

Usage: PYTHONPATH=. python bench/bench_ca_abuse.py [--honest 300] [--abusers 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_ca import start_ca  # noqa: E402
from certs.ca.policy import CaPolicy  # noqa: E402
from tests.ca_abuse import scenario  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--honest", type=int, default=300, help="honest enrollments (default 300)")
    parser.add_argument("--honest-threads", type=int, default=8)
    parser.add_argument("--abusers", type=int, default=6, help="flooding clients (default 6)")
    parser.add_argument("--p99", type=float, default=2.0, help="latency bound, seconds (default 2)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop the run after this")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.honest <= 10_000 or not 0 <= args.abusers <= 64:
        parser.error("--honest 1..10000, --abusers 0..64")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_ca(Path(tmp), extra=())
        try:
            timer = threading.Timer(args.max_seconds, proc.kill)
            timer.start()
            outcome = scenario(
                url,
                honest=args.honest,
                honest_threads=args.honest_threads,
                abusers=args.abusers,
                max_bytes=CaPolicy().max_request_bytes,
            )
            timer.cancel()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    summary = {**outcome.summary(), "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    ok = outcome.success_rate >= 0.99 and outcome.quantile(0.99) <= args.p99
    summary["ok"] = ok
    print(json.dumps(summary, indent=None if args.json else 2, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
