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
from loader import opscli
from loader.errors import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, LoaderError
from loader.files import load_ca, read_bounded

_EVIDENCE_CLIS = {
    "tdx": "attestation.tdx.cli",
    "sev-snp": "attestation.sevsnp.cli",
    "nvidia": "attestation.nvidia.cli",
}


def _setup_logging(verbose: bool) -> None:
    from loader.logs import setup_logging

    setup_logging(choice="text", level=logging.INFO if verbose else logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: same behaviour under systemd (NOTIFY_SOCKET) and in a container (none)."""
    import resource

    from loader import chain_cli
    from loader.boot import boot
    from loader.config import load_config
    from loader.logs import setup_logging
    from loader.notify import Notifier
    from loader.signals import EXIT_TERMINATED, Terminated, sigterm_raises

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold the key and data
    setup_logging(choice=args.log_format)
    notifier = Notifier.from_env()
    try:
        cfg = load_config(args.config, ca_url=args.ca_url)
        settings, sinks = chain_cli.prepare(cfg.publish, args)
    except LoaderError:
        notifier.status("invalid configuration")
        raise  # one "error: FILE: KEY: ..." line, as every command prints it
    try:
        with sigterm_raises():
            outcome = boot(cfg, report_out=args.report_out, notifier=notifier)
    except Terminated as exc:
        notifier.stopping("terminated")
        logging.getLogger("trusted-loader").error(
            "%s; workload stopped, staged inputs wiped, no report signed",
            exc,
            extra={"exit_code": EXIT_TERMINATED},
        )
        return EXIT_TERMINATED
    _log_outcome(outcome)
    return chain_cli.after_boot(cfg.spool_dir, outcome.report, outcome.exit_code, settings, sinks)


def _log_outcome(outcome: Any) -> None:
    log = logging.getLogger("trusted-loader")
    fields = {"verdict": outcome.verdict, "exit_code": outcome.exit_code, "report": str(outcome.spool_path)}
    if outcome.verdict == "abort":
        log.warning(
            "ABORTED: %d reason(s): %s", len(outcome.reasons), "; ".join(outcome.reasons), extra=fields
        )
    else:
        wl = outcome.workload
        state = "timed out" if wl.timed_out else f"exited {wl.exit_code}" if wl.error is None else wl.error
        log.info("workload %s", state, extra=fields)
    log.info("report: %s", outcome.spool_path, extra=fields)


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from loader import chain_cli, demo
    from loader.verify import verify_report

    _setup_logging(args.verbose)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="trusted-loader-demo-"))).resolve()
    config_path = demo.build(workdir, args.ca_url, parties=args.parties)
    outcome = demo.run(config_path, workdir, args.ca_url, parties=args.parties)
    ca = _demo_ca(args.ca_url, outcome.report)
    check = verify_report(outcome.report, ca=ca, allow_mock=True, appraisal=demo.appraisal(workdir))
    sys.stdout.write(demo.summary(workdir, outcome, check, ca_url=args.ca_url))
    if not check.ok:
        return EXIT_REJECTED
    return chain_cli.demo_chain(
        workdir, outcome.report, outcome.spool_path.parent, outcome.exit_code, args, ca
    )


def _demo_ca(ca_url: str | None, report: bytes) -> list[Any]:
    """The CA to check the demo's report against: the one that issued its certificate, as
    published at --ca-url. An abort report after a refusal is self-issued and needs none."""
    from loader.enroll import CaClient, EnrollmentError
    from loader.report import parse_report

    if not ca_url or len(parse_report(report).chain) < 2:
        return []
    try:
        return [CaClient(ca_url).ca_certificate()]
    except EnrollmentError as exc:
        raise LoaderError(f"--ca-url: cannot fetch the CA certificate to verify the report: {exc}") from exc


def cmd_digest(args: argparse.Namespace) -> int:
    from loader.errors import InputError
    from loader.measure import measure
    from loader.progress import for_terminal

    meter = for_terminal()
    try:
        found = measure(args.path, format=args.format, platform=args.platform, ref=args.ref, meter=meter)
    except InputError as exc:
        raise LoaderError(str(exc)) from exc
    finally:
        meter.finish()
    if found.kind == "oci":
        print(f"{args.path}: OCI image, manifest digest", file=sys.stderr)
    print(found.digest)
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _collateral_trust(directory: Path, allow_mock: bool) -> Any:
    """Trust with every file of `directory` as collateral (Intel PCS files by their names, SNP
    `vcek`/`chain`/`crl`...), and the TCB evaluation required rather than optional."""
    from attestation import Trust

    if not directory.is_dir():
        raise LoaderError(f"{directory}: --collateral must be a directory")
    files = {
        p.name: read_bounded(p, "collateral", 4 << 20) for p in sorted(directory.iterdir()) if p.is_file()
    }
    return Trust(allow_mock=allow_mock, collateral=files, options={"require_collateral": True})


def cmd_report_verify(args: argparse.Namespace) -> int:
    from loader.appraisal_cli import appraisal_from
    from loader.verify import verify_report

    raw = read_bounded(args.report, "report")
    trust = _collateral_trust(args.collateral, args.allow_mock) if args.collateral else None
    appraisal = appraisal_from(args, args.at)
    result = verify_report(
        raw, ca=load_ca(args.ca), at=args.at, allow_mock=args.allow_mock, trust=trust, appraisal=appraisal
    )
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for name, passed, detail in result.checks:
            print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}", file=sys.stderr)
    if result.ok:
        print(f"{args.report}: verified{_any_image_note(result)}", file=sys.stderr)
        return EXIT_OK
    print(f"{args.report}: rejected: {result.reason()}", file=sys.stderr)
    return EXIT_REJECTED


def _any_image_note(result: Any) -> str:
    return " (ANY IMAGE ACCEPTED: --any-image)" if result.appraisal.any_image else ""


def cmd_replay(args: argparse.Namespace) -> int:
    from loader.appraisal_cli import appraisal_from
    from loader.replay import replay

    check, items = replay(
        read_bounded(args.report, "report"),
        args.input,
        ca=load_ca(args.ca),
        at=args.at,
        allow_mock=args.allow_mock,
        appraisal=appraisal_from(args, args.at),
    )
    if not check.ok:
        print(f"{args.report}: rejected: {check.reason()}", file=sys.stderr)
        return EXIT_REJECTED
    bad = [i for i in items if not i.matches]
    for item in items:
        state = "matches" if item.matches else f"DIFFERS: {item.difference()}"
        print(f"{item.label} ({item.path}): {state}", file=sys.stderr)
    if bad:
        print(f"replay failed: {', '.join(i.label for i in bad)} differ(s) from the report", file=sys.stderr)
        return EXIT_REJECTED
    print(f"replay ok: {len(items)} input(s) match the report{_any_image_note(check)}", file=sys.stderr)
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
    from loader import appraisal_cli, chain_cli

    parser = argparse.ArgumentParser(prog="trusted-loader", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="boot sequence: attest, measure, decide, run, report")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--report-out", type=Path)
    run.add_argument("--ca-url")
    run.add_argument(
        "--log-format", choices=["auto", "json", "text"], default="auto", help="auto: JSON unless a terminal"
    )
    chain_cli.add_publish_options(run)
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
    chain_cli.add_publish_options(demo)
    demo.set_defaults(func=cmd_demo)

    digest = sub.add_parser("digest", help="print sha256:<hex> of a file, directory or OCI image")
    digest.add_argument("path", type=Path)
    digest.add_argument(
        "--format",
        choices=("auto", "plain", "oci"),
        default="auto",
        help="plain: file/directory digest; oci: image manifest digest; auto: oci if it looks like one",
    )
    digest.add_argument("--platform", help="OS/ARCH[/VARIANT] of a multi-platform image (default: host)")
    digest.add_argument("--ref", help="tag (org.opencontainers.image.ref.name) when index.json lists several")
    digest.set_defaults(func=cmd_digest)

    report = sub.add_parser("report", help="show or verify an integrity report").add_subparsers(
        dest="report_command", required=True
    )
    opscli.add_report_show(report, _time)
    verify = report.add_parser("verify")
    verify.add_argument("report", type=Path)
    verify.add_argument("--ca", type=Path)
    verify.add_argument("--at", type=_time)
    verify.add_argument("--allow-mock", action="store_true")
    verify.add_argument(
        "--collateral", type=Path, help="directory of vendor collateral (Intel PCS files...): TCB evaluated"
    )
    verify.add_argument("--json", action="store_true")
    appraisal_cli.add_options(verify)
    verify.set_defaults(func=cmd_report_verify)

    chain_cli.add_commands(sub, report)

    rep = sub.add_parser("replay", help="compare your copies of the inputs with a report")
    rep.add_argument("report", type=Path)
    rep.add_argument("--input", action="append", required=True, metavar="ROLE[:NAME]=PATH")
    rep.add_argument("--ca", type=Path)
    rep.add_argument("--at", type=_time)
    rep.add_argument("--allow-mock", action="store_true")
    appraisal_cli.add_options(rep)
    rep.set_defaults(func=cmd_replay)

    from certs.cli import add_parser as add_ca_parser

    add_ca_parser(sub)
    opscli.add_parsers(sub)

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
