"""The appraisal options shared by `report verify`, `replay`, `grant create` and `output open`.

  --reference FILE                 reference values (attestation/reference.py) the platform must match
  --reference-signer NAME=PUB.pem  a publisher whose detached signature (loader/report/signing.py, the
  --reference-signature SIG        same COSE envelopes as approved lists) FILE must carry; with
                                   signers given, every one of them must have signed
  --any-image                      accept any image: no reference values (said in every output)
  --allow-debug                    accept a debug TEE (its host can read its memory)
Without --reference and without --any-image, evidence is not "verified": the check names what
is unpinned (fail closed).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from attestation.reference import MAX_REFERENCE_BYTES, Appraisal, ReferenceError, parse_reference
from loader.cli.files import read_bounded
from loader.errors import LoaderError, TrustError


def add_verifier_options(
    parser: argparse.ArgumentParser, *, signer: str = "the report's certificate"
) -> None:
    """--ca, --at and --allow-mock, then the appraisal options: what every command that verifies a
    report or a CVM certificate takes (`report verify|show`, `replay`, `grant create`, `output open`)."""
    from attestation.clikit import parse_time

    parser.add_argument("--ca", type=Path, help=f"CA certificate (PEM) {signer} must chain to")
    parser.add_argument(
        "--at", type=parse_time, help="use this time (ISO 8601) for every validity check; default now"
    )
    parser.add_argument("--allow-mock", action="store_true", help="accept mock evidence (reported as MOCK)")
    add_options(parser)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", type=Path, metavar="FILE", help="reference values to appraise against")
    parser.add_argument(
        "--reference-signer",
        action="append",
        default=[],
        metavar="NAME=PUB.pem",
        help="a publisher whose signature on the reference values is required (repeatable)",
    )
    parser.add_argument(
        "--reference-signature",
        action="append",
        default=[],
        type=Path,
        metavar="SIG",
        help="a detached COSE signature over the reference values file (repeatable)",
    )
    parser.add_argument(
        "--any-image", action="store_true", help="accept any platform image (no reference values)"
    )
    parser.add_argument("--allow-debug", action="store_true", help="accept a debug TEE")


def appraisal_from(args: argparse.Namespace, at: dt.datetime | None = None) -> Appraisal:
    """The appraisal the options ask for; reference signatures judged at `at` (default now)."""
    if args.reference is None:
        if args.reference_signer or args.reference_signature:
            raise LoaderError("--reference-signer/--reference-signature need --reference FILE")
        return Appraisal(None, any_image=args.any_image, allow_debug=args.allow_debug)
    if args.any_image:
        raise LoaderError("give either --reference FILE or --any-image, not both")
    raw = read_bounded(args.reference, "reference values", MAX_REFERENCE_BYTES)
    if args.reference_signer:
        _check_signed(args, raw, at or dt.datetime.now(dt.UTC))
    elif args.reference_signature:
        raise LoaderError("--reference-signature needs --reference-signer NAME=PUB.pem to check it")
    try:
        reference = parse_reference(raw, str(args.reference))
    except ReferenceError as exc:
        raise LoaderError(str(exc)) from exc
    return Appraisal(reference, allow_debug=args.allow_debug)


def _check_signed(args: argparse.Namespace, raw: bytes, at: dt.datetime) -> None:
    from loader.report.partykeys import load_public
    from loader.report.signing import check_signatures

    keys: dict[str, Any] = {}
    for text in args.reference_signer:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise LoaderError(f"--reference-signer {text!r}: expected NAME=PUBLIC_KEY.pem")
        keys[name] = load_public(Path(path), f"reference signer {name!r} key")
    envelopes = [(p.name, read_bounded(p, "reference signature", 64 << 10)) for p in args.reference_signature]
    check = check_signatures(raw, envelopes, keys, list(keys), at)
    if not check.ok:
        raise TrustError(f"{args.reference}: reference values: {check.reasons[0]}")


def to_json(appraisal: Appraisal) -> dict[str, Any]:
    return appraisal.to_json()
