"""The `trusted-loader` command line (DESIGN "Command line").

Exit codes: 0 success / verified; 1 rejected; 2 usage or I/O error. `run` and `demo` add:
3 aborted by policy, 4 attestation failed, 5 workload failed (see README).
With --json, one JSON object goes to stdout; messages go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from attestation.clikit import fail
from loader.errors import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, LoaderError

_EVIDENCE_CLIS = {
    "tdx": "attestation.tdx.cli",
    "sev-snp": "attestation.sevsnp.cli",
    "nvidia": "attestation.nvidia.cli",
}


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="trusted-loader: %(message)s",
        stream=sys.stderr,
    )


def _read(path: Path, what: str, limit: int = 64 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise LoaderError(f"{path}: cannot read {what}: {exc.strerror}") from exc
    if len(data) > limit:
        raise LoaderError(f"{path}: {what} larger than {limit} bytes")
    return data


def cmd_run(args: argparse.Namespace) -> int:
    from loader.boot import boot
    from loader.config import load_config

    _setup_logging(True)
    cfg = load_config(args.config, ca_url=args.ca_url)
    outcome = boot(cfg, report_out=args.report_out)
    _print_outcome(outcome)
    return outcome.exit_code


def _print_outcome(outcome: Any) -> None:
    if outcome.verdict == "abort":
        print(f"ABORTED: {len(outcome.reasons)} reason(s):", file=sys.stderr)
        for reason in outcome.reasons:
            print(f"  - {reason}", file=sys.stderr)
    else:
        wl = outcome.workload
        state = "timed out" if wl.timed_out else f"exited {wl.exit_code}" if wl.error is None else wl.error
        print(f"workload {state}", file=sys.stderr)
    print(f"report: {outcome.spool_path}", file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from loader import demo
    from loader.verify import verify_report

    _setup_logging(args.verbose)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="trusted-loader-demo-"))).resolve()
    config_path = demo.build(workdir, args.ca_url, parties=args.parties)
    outcome = demo.run(config_path, workdir, args.ca_url, parties=args.parties)
    check = verify_report(outcome.report, allow_mock=True)
    sys.stdout.write(demo.summary(workdir, outcome, check))
    if not check.ok:
        return EXIT_REJECTED
    return outcome.exit_code


def cmd_digest(args: argparse.Namespace) -> int:
    from loader.digest import digest_path
    from loader.errors import InputError

    try:
        print(digest_path(args.path).digest)
    except InputError as exc:
        raise LoaderError(str(exc)) from exc
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def cmd_report_show(args: argparse.Namespace) -> int:
    from loader.report import parse_report
    from loader.show import render_text

    report = parse_report(_read(args.report, "report"))
    if args.json:
        doc = {"digest": report.digest, **_jsonable(report.payload)}
        doc["certificates"] = [c.subject.rfc4514_string() for c in report.chain]
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return EXIT_OK


def cmd_report_verify(args: argparse.Namespace) -> int:
    from certs.chain import load_certificates
    from loader.verify import verify_report

    raw = _read(args.report, "report")
    ca = load_certificates(_read(args.ca, "CA certificate"), what=str(args.ca)) if args.ca else []
    result = verify_report(raw, ca=ca, at=args.at, allow_mock=args.allow_mock)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for name, passed, detail in result.checks:
            print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}", file=sys.stderr)
    if result.ok:
        print(f"{args.report}: verified", file=sys.stderr)
        return EXIT_OK
    print(f"{args.report}: rejected: {result.reason()}", file=sys.stderr)
    return EXIT_REJECTED


def cmd_replay(args: argparse.Namespace) -> int:
    from loader.replay import replay

    check, items = replay(_read(args.report, "report"), args.input)
    if not check.ok:
        print(f"{args.report}: rejected: {check.reason()}", file=sys.stderr)
        return EXIT_REJECTED
    bad = [i for i in items if not i.matches]
    for item in items:
        state = "matches" if item.matches else f"DIFFERS: report has {item.recorded}, found {item.found}"
        print(f"{item.label} ({item.path}): {state}", file=sys.stderr)
    if bad:
        print(f"replay failed: {', '.join(i.label for i in bad)} differ(s) from the report", file=sys.stderr)
        return EXIT_REJECTED
    print(f"replay ok: {len(items)} input(s) match the report", file=sys.stderr)
    return EXIT_OK


def cmd_evidence_verify(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        module = importlib.import_module(_EVIDENCE_CLIS[args.type])
    except ImportError as exc:
        raise LoaderError(f"--type {args.type}: backend not available ({exc})") from exc
    return int(module.main(rest, f"trusted-loader evidence verify --type {args.type}"))


def _time(text: str) -> dt.datetime:
    from attestation.clikit import parse_time

    return parse_time(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trusted-loader", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="boot sequence: attest, measure, decide, run, report")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--report-out", type=Path)
    run.add_argument("--ca-url")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the whole flow on the mock TEE with sample inputs")
    demo.add_argument("--workdir", type=Path)
    demo.add_argument("--ca-url")
    demo.add_argument("--verbose", action="store_true")
    demo.add_argument(
        "--parties",
        action="store_true",
        help="the three-party scenario: signed list, encrypted datasets, grants, sealed output",
    )
    demo.set_defaults(func=cmd_demo)

    digest = sub.add_parser("digest", help="print sha256:<hex> of a file or directory")
    digest.add_argument("path", type=Path)
    digest.set_defaults(func=cmd_digest)

    report = sub.add_parser("report", help="show or verify an integrity report").add_subparsers(
        dest="report_command", required=True
    )
    show = report.add_parser("show")
    show.add_argument("report", type=Path)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_report_show)
    verify = report.add_parser("verify")
    verify.add_argument("report", type=Path)
    verify.add_argument("--ca", type=Path)
    verify.add_argument("--at", type=_time)
    verify.add_argument("--allow-mock", action="store_true")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_report_verify)

    rep = sub.add_parser("replay", help="compare your copies of the inputs with a report")
    rep.add_argument("report", type=Path)
    rep.add_argument("--input", action="append", required=True, metavar="ROLE[:NAME]=PATH")
    rep.set_defaults(func=cmd_replay)

    evidence = sub.add_parser("evidence", help="verify hardware evidence").add_subparsers(
        dest="evidence_command", required=True
    )
    ev = evidence.add_parser("verify", add_help=False)
    ev.add_argument("--type", required=True, choices=sorted(_EVIDENCE_CLIS))
    ev.set_defaults(func=cmd_evidence_verify, passthrough=True)

    from loader import party_cli

    party_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    wants_json = bool(getattr(args, "json", False))
    try:
        if getattr(args, "passthrough", False):
            return cmd_evidence_verify(args, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return int(args.func(args))
    except LoaderError as exc:
        return fail(str(exc), exc.exit_code, wants_json)
    except _certs_errors() as exc:
        return fail(str(exc), EXIT_USAGE, wants_json)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_USAGE, wants_json)


def _certs_errors() -> type[Exception]:
    from certs.errors import CertsError

    return CertsError


if __name__ == "__main__":
    sys.exit(main())
