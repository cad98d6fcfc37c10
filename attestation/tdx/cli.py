"""`trusted-loader evidence verify --type tdx QUOTE [options]`.

--collateral DIR reads the PCS responses by their file names (collateral.REQUIRED must all be
there; CRL files are optional); --root PEM replaces the bundled Intel SGX Root CA; --accept-tcb
lists the accepted TCB statuses (default UpToDate). --pccs-url ROOT fetches the collateral (TCB
Info, QE Identity, PCK and Root CA CRLs) from Intel PCS or a PCCS and requires the TCB evaluation
and the CRLs; --collateral-cache DIR keeps what was fetched, --offline DIR reads such a cache only.
A collateral document that cannot be fetched or is not for this quote is a rejection (exit 1).
Exit 0 verified, 1 rejected, 2 usage/I-O.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from attestation import clikit
from attestation.errors import CollateralError
from attestation.evidence import Check, Evidence, Result, Trust
from attestation.fetch import Fetcher
from attestation.tdx import collateral as coll
from attestation.tdx import pcs
from attestation.tdx.quote import MAX_QUOTE_BYTES
from attestation.tdx.verifier import TdxVerifier


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Verify an Intel TDX quote (v4 or v5).")
    p.add_argument("quote", type=Path, help="the quote: raw bytes or hex text")
    p.add_argument(
        "--collateral",
        type=Path,
        metavar="DIR",
        help="Intel PCS responses: " + ", ".join(coll.REQUIRED + coll.OPTIONAL),
    )
    p.add_argument("--pccs-url", metavar="ROOT", help="fetch collateral from Intel PCS or a PCCS at ROOT")
    p.add_argument("--collateral-cache", type=Path, metavar="DIR", help="cache of fetched collateral")
    p.add_argument("--offline", type=Path, metavar="DIR", help="with --pccs-url: read only this cache")
    p.add_argument("--root", type=Path, metavar="PEM", help="Intel SGX Root CA (default: the bundled copy)")
    p.add_argument(
        "--accept-tcb",
        default="UpToDate",
        metavar="STATUS,...",
        help="accepted TCB statuses (default UpToDate)",
    )
    p.add_argument(
        "--report-data", metavar="HEX", type=clikit.hex_arg(64), help="expected REPORTDATA (64 bytes, hex)"
    )
    p.add_argument(
        "--require-collateral", action="store_true", help="reject when the TCB cannot be evaluated"
    )
    p.add_argument("--require-crl", action="store_true", help="reject unless a PCK CRL was checked")
    clikit.add_common(p)
    return p


def _read_quote(path: Path) -> bytes:
    """Read at most one byte past the parser's limit: an oversized file is rejected (exit 1) unread."""
    try:
        with path.open("rb") as f:
            raw = f.read(2 * MAX_QUOTE_BYTES + 8)  # hex text takes two characters a byte
    except OSError as exc:
        raise clikit.UsageError(f"{path}: cannot read quote: {exc.strerror or exc}") from exc
    return clikit.evidence_bytes(raw)[: MAX_QUOTE_BYTES + 1]  # oversized: rejected (exit 1) unparsed


def _read_collateral(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        raise clikit.UsageError(f"{directory}: collateral directory not found")
    out = {}
    for name in coll.REQUIRED + coll.OPTIONAL:
        path = directory / name
        if path.exists():
            out[name] = clikit.read_file(path, name, coll.MAX_COLLATERAL_BYTES)
        elif name in coll.REQUIRED:
            raise clikit.UsageError(
                f"{path}: missing (a collateral directory needs {', '.join(coll.REQUIRED)})"
            )
    return out


def _accept(text: str) -> frozenset[str]:
    statuses = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = statuses - coll.TCB_STATUSES
    if not statuses or unknown:
        raise clikit.UsageError(
            f"--accept-tcb: unknown status {', '.join(sorted(unknown)) or '(empty)'}; "
            f"expected some of {', '.join(sorted(coll.TCB_STATUSES))}"
        )
    return statuses


def _fetch(args: argparse.Namespace, data: bytes) -> dict[str, bytes]:
    fetcher = Fetcher(cache_dir=args.collateral_cache, offline_dir=args.offline)
    return pcs.PcsClient(args.pccs_url, fetcher).collateral(pcs.target_of(data))


def main(argv: list[str], prog: str = "trusted-loader evidence verify --type tdx") -> int:
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # usage errors exit 2 (argparse printed why), --help exits 0
        return exc.code if isinstance(exc.code, int) else clikit.EXIT_USAGE

    def body() -> int:
        roots = (
            {"intel_root": clikit.read_file(args.root, "root certificate", 64 * 1024)} if args.root else {}
        )
        if args.pccs_url and args.collateral:
            raise clikit.UsageError("--pccs-url and --collateral: give one source of collateral")
        if args.offline and not args.pccs_url:
            raise clikit.UsageError("--offline DIR: needs --pccs-url (the service the copies came from)")
        expected = args.report_data
        data = _read_quote(args.quote)
        fetched = args.pccs_url is not None
        try:
            collateral = (
                _fetch(args, data)
                if fetched
                else _read_collateral(args.collateral)
                if args.collateral
                else {}
            )
        except CollateralError as exc:
            failed = Result("tdx", (Check("collateral", False, str(exc)),), {"tee": "tdx"})
            return clikit.emit(failed, as_json=args.json, source=str(args.quote))
        trust = Trust(
            roots=roots,
            collateral=collateral,
            options={
                "accept_tcb": _accept(args.accept_tcb),
                "require_collateral": args.require_collateral or fetched,
                "require_crl": args.require_crl or fetched,
            },
        )
        at = args.at or dt.datetime.now(dt.UTC)
        result = TdxVerifier().verify(
            Evidence("tdx", data), expected_report_data=expected, trust=trust, at=at
        )
        return clikit.emit(
            result, as_json=args.json, source=str(args.quote), appraisal=clikit.appraisal_of(args)
        )

    return clikit.run_guarded(body, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], "python -m attestation.tdx.cli"))
