"""Median time of one full-collateral TDX verification after warm-up, against the 10 ms budget.

Quote trustee/tdx_quote_4.dat with go-tdx-guest's TCB Info, QE Identity, issuer chains, PCK CRL
and Root CA CRL at 2023-07-01 (every check passes, TCB UpToDate). Each iteration builds a fresh
Trust from bytes, so parsing of quote, certificates, CRLs and JSON is included.

Run: PYTHONPATH=. python bench/bench_tdx_verify.py [iterations]
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

from attestation.evidence import Evidence, Trust
from attestation.tdx.verifier import TdxVerifier

BUDGET_MS = 10.0
REPO = Path(__file__).resolve().parents[1]


def _vectors() -> Path:
    env = os.environ.get("TL_VECTORS")
    return Path(env) if env else REPO / "tests" / "vectors"


def main(iterations: int = 300) -> int:
    go = _vectors() / "tdx" / "go-tdx-guest"
    data = (_vectors() / "tdx" / "trustee" / "tdx_quote_4.dat").read_bytes()
    files = {
        "tcb_info.json": "sample_tcbInfo_response",
        "tcb_info_issuer_chain.pem": "tcbinfo_issuer_chain.pem",
        "qe_identity.json": "sample_qeIdentity_response",
        "qe_identity_issuer_chain.pem": "qeidentity_issuer_chain.pem",
        "pck_crl.der": "pckcrl",
        "root_ca_crl.der": "rootcrl.der",
    }
    collateral = {name: (go / src).read_bytes() for name, src in files.items()}
    at = dt.datetime(2023, 7, 1, tzinfo=dt.UTC)
    verifier = TdxVerifier()

    def once() -> float:
        start = time.perf_counter()
        result = verifier.verify(
            Evidence("tdx", data), expected_report_data=None, trust=Trust(collateral=collateral), at=at
        )
        elapsed = time.perf_counter() - start
        if not result.ok or result.tcb_status != "UpToDate":
            raise SystemExit(f"benchmark input did not verify: {result.reason()}")
        return elapsed * 1000

    for _ in range(20):
        once()
    samples = [once() for _ in range(iterations)]
    median = statistics.median(samples)
    p90 = statistics.quantiles(samples, n=10)[-1]
    print(
        f"tdx full-collateral verify: median {median:.2f} ms over {iterations} runs (p90 {p90:.2f} ms); "
        f"ratio to the {BUDGET_MS:.0f} ms budget: {median / BUDGET_MS:.2f}"
    )
    return 0 if median < BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
