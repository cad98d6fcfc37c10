"""Publish latency on a local anvil node: per report, from "deliver" to the delivery record.

    PYTHONPATH=. python bench/bench_publish.py [--reports N] [--anvil PATH]

Each report is a real demo report (~5 KB, mock TEE). The latency covers the registry lookup,
gas estimation, signing, sending, the receipt (anvil mines instantly) and the event read-back.
Also prints the cost of importing the EVM sink, which `run` pays only when publishing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.chain_helpers import Anvil, find_anvil, key_file, make_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=20)
    parser.add_argument("--anvil", type=Path, default=find_anvil())
    args = parser.parse_args()
    if args.anvil is None:
        print("anvil not found: run .ci/install-node-tools.sh or pass --anvil", file=sys.stderr)
        return 2
    start = time.perf_counter()
    from loader.publish import evm
    from loader.publish.deliver import Delivery
    from loader.publish.keyfile import read_account_key
    from loader.publish.ledger import Ledger
    from loader.publish.spool import spool_report

    import_s = time.perf_counter() - start
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    reports = [make_report(work / f"job{i}") for i in range(args.reports)]
    node = Anvil(args.anvil).start()
    try:
        key = read_account_key(key_file(work))
        address, _ = evm.deploy(evm.connect(node.url), key, deadline=time.monotonic() + 60)
        sink = evm.EvmSink(node.url, address, key)
        ledger = Ledger(work / "spool")
        latencies, gas = [], []
        for report in reports:
            digest = spool_report(ledger.spool_dir, report).name[:64]
            t0 = time.perf_counter()
            [outcome] = Delivery(ledger, [sink], only={digest}).run(60)
            latencies.append(time.perf_counter() - t0)
            assert outcome.delivered, outcome.detail
            receipt = sink._ready(time.monotonic() + 10).w3.eth.get_transaction_receipt(
                outcome.receipt["tx_hash"]
            )
            gas.append(receipt["gasUsed"])
    finally:
        node.stop()
    ms = sorted(x * 1000 for x in latencies)
    size = statistics.mean(len(r) for r in reports)
    print(f"import loader.publish.evm: {import_s * 1000:.0f} ms")
    print(f"reports: {len(ms)} x {size:.0f} bytes; gas used mean {statistics.mean(gas):.0f}")
    p90 = ms[int(0.9 * (len(ms) - 1))]
    print(
        f"publish latency: first (incl. connect and contract check) {latencies[0] * 1000:.1f} ms, "
        f"median {statistics.median(ms):.1f} ms, p90 {p90:.1f} ms, max {ms[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
