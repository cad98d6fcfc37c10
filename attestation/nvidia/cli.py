"""`trusted-loader evidence verify --type nvidia REPORT --chain PEM [--nonce HEX] [--rim FILE ...]
[--ocsp-url URL]`.

Exit 0 verified, 1 rejected (any failed check, malformed report included), 2 usage or I/O.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from attestation.clikit import EXIT_USAGE, add_common, appraisal_of, emit, hex_arg, read_file, run_guarded
from attestation.evidence import Evidence, Trust
from attestation.nvidia.ocsp import DEFAULT_URL as DEFAULT_OCSP_URL
from attestation.nvidia.ocsp import with_revocation
from attestation.nvidia.spdm import NONCE_LEN
from attestation.nvidia.verifier import DEVICE_ROOT_KEY, RIM_PREFIX, RIM_ROOT_KEY, NvidiaVerifier


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Verify an NVIDIA GPU attestation report (SPDM 1.1).")
    p.add_argument("report", type=Path, help="report: hex text (as nvtrust stores it) or raw bytes")
    p.add_argument("--chain", type=Path, required=True, help="GPU certificate chain, PEM, leaf first")
    p.add_argument(
        "--report-data",
        "--nonce",
        dest="nonce",
        metavar="HEX",
        type=hex_arg(NONCE_LEN),
        help=f"expected nonce, the GPU report's binding ({NONCE_LEN} bytes, hex); required to pass",
    )
    p.add_argument("--rim", type=Path, action="append", default=[], help="driver or VBIOS RIM (repeatable)")
    p.add_argument("--require-rims", action="store_true", help="fail unless driver and VBIOS RIMs match")
    p.add_argument("--device-root", type=Path, help="override the bundled NVIDIA Device Identity CA")
    p.add_argument("--rim-root", type=Path, help="override the bundled NVIDIA RIM root")
    p.add_argument(
        "--ocsp-url",
        metavar="URL",
        help="check every certificate of the chain with this OCSP responder (NVIDIA's: "
        f"{DEFAULT_OCSP_URL}); without it revocation is not checked and an advisory says so",
    )
    add_common(p)
    return p


def _run(args: argparse.Namespace) -> int:
    data = read_file(args.report, "report", limit=64 * 1024)
    chain = read_file(args.chain, "certificate chain", limit=256 * 1024)
    collateral = {"chain": chain}
    for i, path in enumerate(args.rim, start=1):
        label = path.name if f"{RIM_PREFIX}{path.name}" not in collateral else f"{path.name}#{i}"
        collateral[f"{RIM_PREFIX}{label}"] = read_file(path, "RIM", limit=1 << 20)
    roots = {}
    if args.device_root:
        roots[DEVICE_ROOT_KEY] = read_file(args.device_root, "device root")
    if args.rim_root:
        roots[RIM_ROOT_KEY] = read_file(args.rim_root, "RIM root")
    trust = Trust(roots=roots, collateral=collateral, options={"require_rims": args.require_rims})
    at = args.at or dt.datetime.now(dt.UTC)
    result = NvidiaVerifier().verify(
        Evidence(type="nvidia", data=data, aux={}), expected_report_data=args.nonce, trust=trust, at=at
    )
    if args.ocsp_url:
        result = with_revocation(result, chain, url=args.ocsp_url, at=at)
    return emit(result, as_json=args.json, source=str(args.report), appraisal=appraisal_of(args))


def main(argv: list[str], prog: str = "trusted-loader evidence verify --type nvidia") -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else 0
    return run_guarded(lambda: _run(args), as_json=bool(args.json))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], "python -m attestation.nvidia.cli"))
