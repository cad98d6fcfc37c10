"""`trusted-loader evidence verify --type tdx QUOTE [options]`.

--collateral DIR reads the PCS responses by their file names (collateral.REQUIRED must all be
there; CRL files are optional); --root PEM replaces the bundled Intel SGX Root CA; --accept-tcb
lists the accepted TCB statuses (default UpToDate). Exit 0 verified, 1 rejected, 2 usage/I-O.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from attestation import clikit
from attestation.evidence import Evidence, Trust
from attestation.tdx import collateral as coll
from attestation.tdx.quote import MAX_QUOTE_BYTES
from attestation.tdx.verifier import TdxVerifier


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Verify an Intel TDX quote (v4 or v5).")
    p.add_argument("quote", type=Path, help="the quote, raw binary")
    p.add_argument(
        "--collateral",
        type=Path,
        metavar="DIR",
        help="Intel PCS responses: " + ", ".join(coll.REQUIRED + coll.OPTIONAL),
    )
    p.add_argument("--root", type=Path, metavar="PEM", help="Intel SGX Root CA (default: the bundled copy)")
    p.add_argument(
        "--accept-tcb",
        default="UpToDate",
        metavar="STATUS,...",
        help="accepted TCB statuses (default UpToDate)",
    )
    p.add_argument("--report-data", metavar="HEX", help="expected REPORTDATA (64 bytes, hex)")
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
            return f.read(MAX_QUOTE_BYTES + 1)
    except OSError as exc:
        raise clikit.UsageError(f"{path}: cannot read quote: {exc.strerror or exc}") from exc


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


def _expected(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text)
    except ValueError as exc:
        raise clikit.UsageError("--report-data: not hex") from exc
    if len(value) != 64:
        raise clikit.UsageError(f"--report-data: expected 64 bytes, found {len(value)}")
    return value


def main(argv: list[str], prog: str = "trusted-loader evidence verify --type tdx") -> int:
    args = _parser(prog).parse_args(argv)

    def body() -> int:
        roots = (
            {"intel_root": clikit.read_file(args.root, "root certificate", 64 * 1024)} if args.root else {}
        )
        trust = Trust(
            roots=roots,
            collateral=_read_collateral(args.collateral) if args.collateral else {},
            options={
                "accept_tcb": _accept(args.accept_tcb),
                "require_collateral": args.require_collateral,
                "require_crl": args.require_crl,
            },
        )
        expected = _expected(args.report_data)
        data = _read_quote(args.quote)
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
