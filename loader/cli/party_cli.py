"""Commands for the parties of a multi-party job (data owners, engine author, order owner).

  key generate --type p384|ed25519|x25519 --out PREFIX     PREFIX.pem (0600) and PREFIX.pub.pem
  policy sign APPROVED --key KEY.pem --out SIG [--expires ISO8601 | --days N]
  policy verify APPROVED --signature SIG... (--signer NAME=PUB.pem... --require NAME... | --config TOML)
  dataset encrypt SRC --name NAME --out FILE --key-out KEYFILE    prints the plaintext digest
  grant create --cert CVM.pem --dataset-key KEYFILE --policy APPROVED --out FILE [--ca PEM]
               [--allow-mock] [--at ISO8601] (--reference FILE | --any-image) [--allow-debug]
  output open SEALED --key OWNER.pem --out DIR [--report REPORT [--ca PEM] [--allow-mock]
               [--at ISO8601] (--reference FILE | --any-image) [--allow-debug]]
The appraisal options are loader/cli/appraisal_cli.py's: the CVM's platform must match the
reference values (or --any-image says any is acceptable), as `report verify` requires.

Exit codes as everywhere: 0 done / verified, 1 rejected (a signature, grant, certificate or
sealed file does not verify), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from loader.cli.files import read_bounded
from loader.errors import EXIT_OK, EXIT_REJECTED, LoaderError, TrustError


def _time(text: str) -> dt.datetime:
    from attestation.clikit import parse_time

    return parse_time(text)


def cmd_key_generate(args: argparse.Namespace) -> int:
    from loader.report import partykeys

    key = partykeys.generate(args.type)
    private, public = Path(f"{args.out}.pem"), Path(f"{args.out}.pub.pem")
    partykeys.write_private(key, private)
    partykeys.write_public(key.public_key(), public)
    print(f"{private}: private key ({args.type}); {public}: public key", file=sys.stderr)
    print(partykeys.key_id_text(key.public_key()))
    return EXIT_OK


def cmd_policy_sign(args: argparse.Namespace) -> int:
    from loader.publish.spool import atomic_write
    from loader.report.partykeys import load_private
    from loader.report.policy import parse_policy

    document = read_bounded(args.policy, "approved list", 1 << 20)
    policy = parse_policy(document, str(args.policy))
    now = dt.datetime.now(dt.UTC)
    expires = args.expires or now + dt.timedelta(days=args.days)
    from loader.report.signing import sign_policy

    envelope = sign_policy(document, load_private(args.key, "signing key"), issued=now, expires=expires)
    atomic_write(args.out, envelope)
    print(f"{args.out}: signed {policy.digest}, valid until {expires.isoformat()}", file=sys.stderr)
    return EXIT_OK


def _signers_from_args(args: argparse.Namespace) -> tuple[dict[str, Path], list[str]]:
    signers: dict[str, Path] = {}
    for text in args.signer or []:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise LoaderError(f"--signer {text!r}: expected NAME=PUBLIC_KEY.pem")
        signers[name] = Path(path)
    required = list(args.require or signers)
    return signers, required


def cmd_policy_verify(args: argparse.Namespace) -> int:
    from loader.report.partykeys import load_public
    from loader.report.signing import check_signatures

    if args.config:
        from loader.boot.config import load_config

        cfg = load_config(args.config)
        if cfg.signing is None:
            raise LoaderError(f"{args.config}: names no [policy.signers]")
        signers = dict(cfg.signing.signers)
        required = list(cfg.signing.required)
        sig_paths = list(args.signature or cfg.signing.signatures)
        policy_path = args.policy or cfg.policy_path
    else:
        if args.policy is None or not args.signer:
            raise LoaderError("give APPROVED and --signer NAME=PUB.pem (or --config)")
        signers, required = _signers_from_args(args)
        sig_paths, policy_path = list(args.signature or []), args.policy
    document = read_bounded(policy_path, "approved list", 1 << 20)
    keys = {name: load_public(path, f"signer {name!r} key") for name, path in signers.items()}
    envelopes = [(p.name, read_bounded(p, "signature", 64 << 10)) for p in sig_paths]
    check = check_signatures(document, envelopes, keys, required, args.at or dt.datetime.now(dt.UTC))
    if args.json:
        json.dump(
            {"ok": check.ok, "verified": list(check.verified), "reasons": list(check.reasons)}, sys.stdout
        )
        sys.stdout.write("\n")
    for reason in check.reasons:
        print(f"FAIL {reason}", file=sys.stderr)
    if check.ok:
        print(f"{policy_path}: signed by {', '.join(check.verified)}", file=sys.stderr)
        return EXIT_OK
    print(f"{policy_path}: rejected", file=sys.stderr)
    return EXIT_REJECTED


def cmd_dataset_encrypt(args: argparse.Namespace) -> int:
    from loader.errors import InputError
    from loader.parties.grants import encrypt_dataset, write_key_file

    if args.key_out.exists():
        raise InputError(f"{args.key_out}: already exists; refusing to overwrite a dataset key")
    key, plain = encrypt_dataset(args.src, args.name, args.out)
    write_key_file(key, args.key_out)
    shown = f"{plain.kind}, {plain.size} bytes"
    print(f"{args.out}: dataset {args.name!r} encrypted ({shown}); key in {args.key_out}", file=sys.stderr)
    print(plain.digest)
    return EXIT_OK


def cmd_grant_create(args: argparse.Namespace) -> int:
    from certs.chain import load_certificates
    from loader.cli.appraisal_cli import appraisal_from
    from loader.parties.cvmcert import load_chain, verify_cvm_certificate
    from loader.parties.grants import create_grant, load_key_file
    from loader.publish.spool import atomic_write

    key = load_key_file(args.dataset_key)
    policy = _consent(args, key.dataset)
    at = args.at or dt.datetime.now(dt.UTC)
    appraisal = appraisal_from(args, at)
    chain = load_chain(read_bounded(args.cert, "CVM certificate", 1 << 20), str(args.cert))
    ca = load_certificates(read_bounded(args.ca, "CA certificate"), what=str(args.ca)) if args.ca else []
    identity = verify_cvm_certificate(
        chain,
        what=str(args.cert),
        at=at,
        ca=ca,
        allow_mock=args.allow_mock,
        allowed_tee=policy.tee,
        appraisal=appraisal,
    )
    grant = create_grant(key, identity.public_key, policy=policy.digest)
    atomic_write(args.out, grant)
    mock = " (MOCK TEE, allowed by --allow-mock)" if any(r.is_mock for r in identity.results) else ""
    image = " (ANY IMAGE ACCEPTED: --any-image)" if appraisal.any_image else ""
    print(
        f"{args.out}: dataset {key.dataset!r} granted to the {identity.tee} CVM{mock}{image} for the "
        f"approved list {policy.digest} (order {policy.order!r})",
        file=sys.stderr,
    )
    return EXIT_OK


def _consent(args: argparse.Namespace, dataset: str) -> Any:
    """The approved list the owner consents to (the grant is bound to its exact digest)."""
    from loader.report.policy import parse_policy

    policy = parse_policy(read_bounded(args.policy, "approved list", 1 << 20), str(args.policy))
    if policy.find("dataset", dataset) is None:
        raise TrustError(f"{args.policy}: dataset {dataset!r} is not in the approved list")
    return policy


def cmd_output_open(args: argparse.Namespace) -> int:
    from loader.parties.seal import open_sealed
    from loader.report.partykeys import load_private

    expected, note = _sealed_digest(args) if args.report else (None, "")
    files = open_sealed(args.sealed, load_private(args.key, "owner key"), args.out, expected_digest=expected)
    print(f"{args.out}: {files} file(s) from {args.sealed}{note}", file=sys.stderr)
    return EXIT_OK


def _sealed_digest(args: argparse.Namespace) -> tuple[str, str]:
    """The sealed output's digest from a report that verifies in full (as `report verify`):
    a signature alone proves nothing, since anyone can sign a report with a key of their own."""
    from loader.cli.appraisal_cli import appraisal_from
    from loader.cli.files import load_ca
    from loader.report.verify import verify_report

    report_path = args.report
    check = verify_report(
        read_bounded(report_path, "report"),
        ca=load_ca(args.ca),
        at=args.at,
        allow_mock=args.allow_mock,
        appraisal=appraisal_from(args, args.at),
    )
    if not check.ok or check.report is None:
        raise TrustError(f"{report_path}: the report does not verify: {check.reason()}")
    output: Any = (check.report.payload["workload"] or {}).get("output")
    if not isinstance(output, dict) or "sealed" not in output:
        raise TrustError(f"{report_path}: the report records no sealed output")
    note = " (report verified; ANY IMAGE ACCEPTED: --any-image)" if check.appraisal.any_image else ""
    return str(output["digest"]), note


def add_parsers(sub: Any) -> None:
    """Register `key`, `policy`, `dataset`, `grant` and `output` on the main parser."""
    from loader.cli import appraisal_cli

    key = sub.add_parser("key", help="party keys").add_subparsers(dest="key_command", required=True)
    gen = key.add_parser("generate", help="a P-384, Ed25519 or X25519 key pair as PEM files")
    gen.add_argument(
        "--type",
        choices=("p384", "ed25519", "x25519"),
        default="p384",
        help="p384 or ed25519 to sign approved lists, x25519 to receive sealed output (default p384)",
    )
    gen.add_argument("--out", required=True, help="path prefix: writes PREFIX.pem and PREFIX.pub.pem")
    gen.set_defaults(func=cmd_key_generate)

    policy = sub.add_parser("policy", help="sign or verify an approved list").add_subparsers(
        dest="policy_command", required=True
    )
    sign = policy.add_parser("sign", help="a detached COSE_Sign1 over the approved list's bytes")
    sign.add_argument("policy", type=Path, help="the approved list (JSON) to sign")
    sign.add_argument("--key", type=Path, required=True, help="the signer's private key (PEM)")
    sign.add_argument("--out", type=Path, required=True, help="where to write the signature")
    sign.add_argument("--expires", type=_time, help="expiry time (ISO 8601); default: --days from now")
    sign.add_argument("--days", type=int, default=30, help="days until the signature expires (default 30)")
    sign.set_defaults(func=cmd_policy_sign)
    verify = policy.add_parser("verify", help="check the signatures on an approved list")
    verify.add_argument("policy", type=Path, nargs="?", help="the approved list (or use --config)")
    verify.add_argument("--signature", type=Path, action="append", help="a signature file (repeatable)")
    verify.add_argument(
        "--signer", action="append", metavar="NAME=PUB.pem", help="a trusted signer's public key (repeatable)"
    )
    verify.add_argument("--require", action="append", metavar="NAME", help="default: every --signer")
    verify.add_argument(
        "--config", type=Path, help="take signers, required and signatures from a loader config"
    )
    verify.add_argument("--at", type=_time, help="check expiry at this time (ISO 8601; default now)")
    verify.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    verify.set_defaults(func=cmd_policy_verify)

    dataset = sub.add_parser("dataset", help="encrypt a dataset").add_subparsers(
        dest="dataset_command", required=True
    )
    enc = dataset.add_parser("encrypt", help="encrypt a file or directory under a fresh data key")
    enc.add_argument("src", type=Path, help="the dataset: a file or a directory")
    enc.add_argument("--name", required=True, help="the dataset's name in the approved list")
    enc.add_argument("--out", type=Path, required=True, help="where to write the encrypted dataset")
    enc.add_argument("--key-out", type=Path, required=True, help="where to write the data key (0600)")
    enc.set_defaults(func=cmd_dataset_encrypt)

    grant = sub.add_parser("grant", help="grant a CVM access to a dataset").add_subparsers(
        dest="grant_command", required=True
    )
    create = grant.add_parser("create", help="wrap a dataset key to an attested CVM certificate")
    create.add_argument("--cert", type=Path, required=True, help="the CVM's attested certificate (PEM)")
    create.add_argument("--dataset-key", type=Path, required=True, help="the data key from `dataset encrypt`")
    create.add_argument(
        "--policy", type=Path, required=True, help="the approved list consented to (the grant is bound to it)"
    )
    create.add_argument("--out", type=Path, required=True, help="where to write the grant")
    appraisal_cli.add_verifier_options(create, signer="the CVM certificate")
    create.set_defaults(func=cmd_grant_create)

    output = sub.add_parser("output", help="open a sealed output").add_subparsers(
        dest="output_command", required=True
    )
    open_ = output.add_parser("open", help="decrypt a sealed output with the order owner's key")
    open_.add_argument("sealed", type=Path, help="the sealed output file")
    open_.add_argument("--key", type=Path, required=True, help="the order owner's X25519 private key (PEM)")
    open_.add_argument("--out", type=Path, required=True, help="directory to extract the output into")
    open_.add_argument(
        "--report", type=Path, help="verify this report in full; the sealed file must be its output"
    )
    appraisal_cli.add_verifier_options(open_)
    open_.set_defaults(func=cmd_output_open)
