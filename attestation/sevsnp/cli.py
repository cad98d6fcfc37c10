"""`trusted-loader evidence verify --type sev-snp REPORT --vcek CERT [--chain PEM] ...`

REPORT is a raw 0x4A0-byte ATTESTATION_REPORT. CERT is the VCEK or VLEK (DER or PEM) named by
the report's SIGNING_KEY; with --kds-url ROOT (and --product) the VCEK, the ASK/ARK chain and
the ARK's CRL are fetched from AMD KDS instead (--no-kds-crl skips the CRL; a VLEK must still be
given). A document that cannot be fetched is a rejection (exit 1). PEM is a bundle holding the
ASK or ASVK (and usually the ARK) in any order, extra certificates allowed; without it the
bundled AMD chain is used. The ARK is never taken from PEM: the trust anchor is the bundled ARK
of the product, or --ark.
Exit codes: 0 verified, 1 rejected, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from attestation import clikit
from attestation.errors import CollateralError
from attestation.evidence import MAX_EVIDENCE_BYTES, Check, Evidence, Result, Trust
from attestation.fetch import Fetcher
from attestation.sevsnp import products
from attestation.sevsnp.kds import KdsClient
from attestation.sevsnp.products import Product
from attestation.sevsnp.validate import PolicyError, SnpPolicy, parse_min_tcb
from attestation.sevsnp.verifier import SnpVerifier

PROG = "trusted-loader evidence verify --type sev-snp"


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Verify an AMD SEV-SNP attestation report.")
    p.add_argument("report", type=Path, help="ATTESTATION_REPORT (0x4A0 bytes): raw bytes or hex text")
    p.add_argument("--vcek", type=Path, help="VCEK or VLEK certificate (DER or PEM)")
    p.add_argument("--kds-url", metavar="ROOT", help="fetch the VCEK, chain and CRL from AMD KDS at ROOT")
    p.add_argument("--no-kds-crl", action="store_true", help="with --kds-url: do not fetch the ARK's CRL")
    p.add_argument("--collateral-cache", type=Path, metavar="DIR", help="cache of fetched collateral")
    p.add_argument("--offline", type=Path, metavar="DIR", help="with --kds-url: read only this cache")
    p.add_argument("--chain", type=Path, help="PEM bundle with the ASK/ASVK (default: bundled AMD chain)")
    p.add_argument("--crl", type=Path, help="the ARK's CRL (DER or PEM) from AMD KDS")
    p.add_argument("--ark", type=Path, help="trust these ARK certificates instead of the bundled AMD roots")
    p.add_argument("--product", choices=[x.slug for x in Product], help="Milan, Genoa or Turin")
    p.add_argument(
        "--report-data", metavar="HEX", type=clikit.hex_arg(64), help="expected REPORT_DATA (64 bytes, hex)"
    )
    p.add_argument(
        "--measurement", type=clikit.hex_arg(48), action="append", default=[], help="allowed MEASUREMENT"
    )
    p.add_argument("--host-data", type=clikit.hex_arg(32), help="expected HOST_DATA")
    p.add_argument(
        "--id-key-digest", type=clikit.hex_arg(48), action="append", default=[], help="allowed ID key digest"
    )
    p.add_argument(
        "--author-key-digest",
        type=clikit.hex_arg(48),
        action="append",
        default=[],
        help="allowed author key digest",
    )
    p.add_argument("--min-tcb", help="minimum SPLs, e.g. bl=3,tee=0,snp=8,ucode=115 (Turin also fmc=)")
    p.add_argument("--vmpl", type=int, choices=range(4), help="required VMPL")
    p.add_argument("--min-guest-svn", type=int, help="minimum GUEST_SVN")
    p.add_argument("--allow-debug", action="store_true", help="accept a guest policy that allows DEBUG")
    p.add_argument("--allow-migrate-ma", action="store_true", help="accept a guest policy with MIGRATE_MA")
    clikit.add_common(p, allow_debug=False)
    return p


def _policy(args: argparse.Namespace) -> SnpPolicy:
    try:
        return SnpPolicy(
            measurements=tuple(args.measurement),
            host_data=args.host_data,
            id_key_digests=tuple(args.id_key_digest),
            author_key_digests=tuple(args.author_key_digest),
            min_tcb=parse_min_tcb(args.min_tcb or ""),
            vmpl=args.vmpl,
            min_guest_svn=args.min_guest_svn,
            allow_debug=args.allow_debug,
            allow_migrate_ma=args.allow_migrate_ma,
        )
    except PolicyError as exc:
        raise clikit.UsageError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    policy = _policy(args)
    data = clikit.evidence_bytes(clikit.read_file(args.report, "report", limit=2 * MAX_EVIDENCE_BYTES))
    if args.vcek is None and args.kds_url is None:
        raise clikit.UsageError("give the signing certificate (--vcek) or where to fetch it (--kds-url)")
    collateral: dict[str, bytes] = {}
    if args.kds_url is not None:
        try:
            collateral = _fetch(args, data)
        except CollateralError as exc:
            failed = Result("sev-snp", (Check("collateral", False, str(exc)),), {})
            return clikit.emit(failed, as_json=args.json, source=str(args.report))
    if args.vcek is not None:
        collateral["vcek"] = clikit.read_file(args.vcek, "VCEK/VLEK certificate", limit=1 << 20)
    if args.chain:
        collateral["chain"] = clikit.read_file(args.chain, "certificate chain", limit=1 << 20)
    if args.crl:
        collateral["crl"] = clikit.read_file(args.crl, "CRL", limit=4 << 20)
    roots = {"ark": clikit.read_file(args.ark, "ARK certificates", limit=1 << 20)} if args.ark else {}
    options = {"policy": policy, **({"product": args.product} if args.product else {})}
    trust = Trust(roots=roots, collateral=collateral, options=options)
    at = args.at or dt.datetime.now(dt.UTC)
    result = SnpVerifier().verify(
        Evidence(type="sev-snp", data=data), expected_report_data=args.report_data, trust=trust, at=at
    )
    return clikit.emit(
        result, as_json=args.json, source=str(args.report), appraisal=clikit.appraisal_of(args)
    )


def _fetch(args: argparse.Namespace, data: bytes) -> dict[str, bytes]:
    if args.product is None:
        raise clikit.UsageError("--kds-url needs --product (the KDS path names it)")
    fetcher = Fetcher(cache_dir=args.collateral_cache, offline_dir=args.offline)
    client = KdsClient(args.kds_url, fetcher)
    return client.collateral(data, products.parse(args.product), crl=not args.no_kds_crl)


def main(argv: list[str], prog: str = PROG) -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else clikit.EXIT_USAGE
    return clikit.run_guarded(lambda: _run(args), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], PROG))
