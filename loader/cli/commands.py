"""The `trusted-loader` command line (docs/commands.md).

Exit codes: 0 success / verified; 1 rejected; 2 usage or I/O error. `run` and `demo` add:
3 aborted by policy, 4 attestation failed, 5 workload failed, 6 report stored but not
published, 143 stopped by SIGTERM (docs/operations.md).
Results go to stdout (with --json, one JSON object); diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from attestation.clikit import fail
from loader.cli import opscli
from loader.cli.files import load_ca, read_bounded
from loader.errors import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, LoaderError

_EVIDENCE_CLIS = {
    "tdx": "attestation.tdx.cli",
    "sev-snp": "attestation.sevsnp.cli",
    "nvidia": "attestation.nvidia.cli",
}


def _setup_logging(verbose: bool) -> None:
    from loader.cli.logs import setup_logging

    setup_logging(choice="text", level=logging.INFO if verbose else logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: same behaviour under systemd (NOTIFY_SOCKET) and in a container (none)."""
    import resource

    from loader.boot.config import load_config
    from loader.boot.notify import Notifier
    from loader.boot.sequence import boot
    from loader.boot.signals import EXIT_TERMINATED, Terminated, sigterm_raises
    from loader.cli import chain_cli
    from loader.cli.logs import setup_logging

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold the key and data
    setup_logging(choice=args.log_format)
    notifier = Notifier.from_env()
    try:
        cfg = load_config(args.config, ca_url=args.ca_url)
        settings, sinks = chain_cli.prepare(cfg, args)
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

    from loader.cli import chain_cli, demo
    from loader.report.verify import verify_report

    _setup_logging(args.verbose)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="trusted-loader-demo-"))).resolve()
    config_path = demo.build(workdir, args.ca_url, parties=args.parties)
    outcome = demo.run(config_path, workdir, args.ca_url, parties=args.parties)
    ca = _demo_ca(args.ca_url, outcome.report)
    from loader.boot.config import load_config

    uncontained = load_config(config_path).run.isolation == "none"  # said on stderr by demo.build
    check = verify_report(
        outcome.report,
        ca=ca,
        allow_mock=True,
        allow_no_isolation=uncontained,
        appraisal=demo.appraisal(workdir),
    )
    sys.stdout.write(demo.summary(workdir, outcome, check, ca_url=args.ca_url))
    if not check.ok:
        return EXIT_REJECTED
    return chain_cli.demo_chain(
        workdir, outcome.report, outcome.spool_path.parent, outcome.exit_code, args, ca
    )


def _demo_ca(ca_url: str | None, report: bytes) -> list[Any]:
    """The CA to check the demo's report against: the one that issued its certificate, as
    published at --ca-url. An abort report after a refusal is self-issued and needs none."""
    from loader.boot.enroll import CaClient, EnrollmentError
    from loader.report.document import parse_report

    if not ca_url or len(parse_report(report).chain) < 2:
        return []
    try:
        return [CaClient(ca_url).ca_certificate()]
    except EnrollmentError as exc:
        raise LoaderError(f"--ca-url: cannot fetch the CA certificate to verify the report: {exc}") from exc


def cmd_digest(args: argparse.Namespace) -> int:
    from loader.errors import InputError
    from loader.measure.inputs import measure
    from loader.measure.progress import for_terminal

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


def _accept_tcb(text: str) -> frozenset[str]:
    from loader.report.collateral import accept_list

    try:
        return frozenset(accept_list([s.strip() for s in text.split(",") if s.strip()]))
    except ValueError as exc:
        raise LoaderError(f"--accept-tcb: {exc}") from exc


def _online_trust(args: argparse.Namespace, raw: bytes) -> Any:
    """Trust with collateral fetched now for the report's hardware evidence (`--online`)."""
    from attestation import AttestationError, Trust
    from loader.errors import ReportError
    from loader.report.collateral import CollateralSettings, fetch_fresh
    from loader.report.document import parse_report

    defaults = CollateralSettings()
    settings = CollateralSettings(
        pccs_url=args.pccs_url or defaults.pccs_url,
        kds_url=args.kds_url or defaults.kds_url,
        rim_url=args.rim_url or defaults.rim_url,
        snp_product=args.snp_product,
    )
    try:
        files = fetch_fresh(parse_report(raw).payload, settings)
    except ReportError:
        return None  # verify_report names what is wrong with the report
    except AttestationError as exc:
        raise LoaderError(f"--online: {exc}") from exc
    return Trust(allow_mock=args.allow_mock, collateral=files, options={"require_collateral": True})


def cmd_report_verify(args: argparse.Namespace) -> int:
    from loader.cli.appraisal_cli import appraisal_from
    from loader.report.verify import verify_report

    raw = read_bounded(args.report, "report")
    if args.online and args.collateral:
        raise LoaderError("--online and --collateral: give one source of fresher collateral")
    trust = _collateral_trust(args.collateral, args.allow_mock) if args.collateral else None
    if args.online:
        trust = _online_trust(args, raw)
    if args.accept_tcb:
        from dataclasses import replace

        from attestation import Trust

        base = trust or Trust(allow_mock=args.allow_mock)
        trust = replace(base, options={**base.options, "accept_tcb": _accept_tcb(args.accept_tcb)})
    result = verify_report(
        raw,
        ca=load_ca(args.ca),
        at=args.at,
        allow_mock=args.allow_mock,
        trust=trust,
        allow_no_isolation=args.allow_no_isolation,
        appraisal=appraisal_from(args, args.at),
    )
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)  # "trust" first
        sys.stdout.write("\n")
    else:
        for name, passed, detail in result.checks:
            print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")
        if args.allow_no_isolation:
            print(f"{args.report}: --allow-no-isolation given: an uncontained engine is accepted")
        print(verification_line(args.report, result))
    return EXIT_OK if result.ok else EXIT_REJECTED


def verification_line(path: Path, result: Any) -> str:
    """The one-line result: the trust state first, the time it was checked at, the reason."""
    from loader.report.show import utc_seconds

    when = f" (checked at {utc_seconds(result.checked_at)})" if result.checked_at else ""
    if not result.ok:
        return f"{path}: NOT verified{when}: {result.reason()}"
    notes = {
        "MOCK": ": the evidence is a software mock, not hardware (--allow-mock)",
        "not appraised": ": evidence authentic; platform not compared with reference values",
    }
    return f"{path}: {result.trust()}{when}{notes.get(result.trust(), '')}{_any_image_note(result)}"


def _any_image_note(result: Any) -> str:
    return " (ANY IMAGE ACCEPTED: --any-image)" if result.appraisal.any_image else ""


def cmd_replay(args: argparse.Namespace) -> int:
    from loader.cli.appraisal_cli import appraisal_from
    from loader.report.replay import replay

    check, items = replay(
        read_bounded(args.report, "report"),
        args.input,
        ca=load_ca(args.ca),
        at=args.at,
        allow_mock=args.allow_mock,
        allow_no_isolation=args.allow_no_isolation,
        appraisal=appraisal_from(args, args.at),
    )
    if not check.ok:
        print(verification_line(args.report, check))
        return EXIT_REJECTED
    bad = [i for i in items if not i.matches]
    for item in items:
        state = "matches" if item.matches else f"DIFFERS: {item.difference()}"
        print(f"{item.label} ({item.path}): {state}")
    skipped = unchecked_inputs(check.report, items)
    if bad:
        print(f"replay failed: {', '.join(i.label for i in bad)} differ(s) from the report")
        return EXIT_REJECTED
    if skipped and not args.partial:
        print(
            f"replay INCOMPLETE: {len(items)} input(s) match, {len(skipped)} not checked: "
            f"{', '.join(skipped)} (give them with --input, or pass --partial)"
        )
        return EXIT_REJECTED
    if skipped:
        note = _any_image_note(check)
        print(f"replay PARTIAL: {len(items)} input(s) match; not checked: {', '.join(skipped)}{note}")
        return EXIT_OK
    print(f"replay ok: all {len(items)} input(s) of the report match{_any_image_note(check)}")
    return EXIT_OK


def unchecked_inputs(report: Any, items: list[Any]) -> list[str]:
    """The report's inputs no --input was given for, named as replay names them."""
    given = {(i.role, i.name) for i in items}
    return [
        (i["role"] if i["role"] != "dataset" else f"dataset {i['name']!r}")
        for i in report.payload["inputs"]
        if (i["role"], i["name"]) not in given
    ]


_EVIDENCE_HELP = """usage: trusted-loader evidence verify --type {nvidia,sev-snp,tdx} FILE [options]

Offline verification of hardware evidence; each type has its own options:
  trusted-loader evidence verify --type tdx --help
  trusted-loader evidence verify --type sev-snp --help
  trusted-loader evidence verify --type nvidia --help
Common to every type: --report-data HEX (the expected binding), --at ISO8601, --json.
Exit codes: 0 verified, 1 rejected, 2 usage or I/O error.
"""


def cmd_evidence_verify(args: argparse.Namespace, rest: list[str]) -> int:
    if args.type is None:
        if "-h" in rest or "--help" in rest:
            sys.stdout.write(_EVIDENCE_HELP)
            return EXIT_OK
        raise LoaderError("evidence verify: --type is required (tdx, sev-snp or nvidia); see --help")
    try:
        module = importlib.import_module(_EVIDENCE_CLIS[args.type])
    except ImportError as exc:
        raise LoaderError(f"--type {args.type}: backend not available ({exc})") from exc
    return int(module.main(rest, f"trusted-loader evidence verify --type {args.type}"))


def _ca_logging(choice: str) -> None:
    """`ca serve` logs as the loader does (JSON lines off a terminal, same fields, redaction)."""
    from loader.cli.logs import LOGGER, setup_logging

    setup_logging(choice=choice, loggers=(LOGGER, "certs"))


def build_parser() -> argparse.ArgumentParser:
    import loader
    from loader.cli import appraisal_cli, chain_cli

    parser = argparse.ArgumentParser(prog="trusted-loader", description=loader.__doc__)
    parser.add_argument("--version", action="version", version=f"trusted-loader {loader.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="boot sequence: attest, measure, decide, run, report")
    run.add_argument("--config", type=Path, required=True, help="the loader configuration (TOML)")
    run.add_argument("--report-out", type=Path, help="also write the signed report here")
    run.add_argument("--ca-url", help="enroll with this attestation CA (overrides [ca] url)")
    run.add_argument(
        "--log-format", choices=["auto", "json", "text"], default="auto", help="auto: JSON unless a terminal"
    )
    chain_cli.add_publish_options(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="the whole flow on the mock TEE with sample inputs")
    demo.add_argument("--workdir", type=Path, help="where to build the job (default: a new temporary dir)")
    demo.add_argument("--ca-url", help="enroll with this attestation CA instead of self-issuing")
    demo.add_argument("--verbose", action="store_true", help="log each boot step")
    demo.add_argument(
        "--parties",
        action="store_true",
        help="the three-party scenario: signed list, encrypted datasets, grants, sealed output",
    )
    chain_cli.add_publish_options(demo)
    demo.set_defaults(func=cmd_demo)

    digest = sub.add_parser("digest", help="print sha256:<hex> of a file, directory or OCI image")
    digest.add_argument("path", type=Path, help="a file, directory, OCI layout or OCI archive")
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
    opscli.add_report_show(report)
    verify = report.add_parser("verify", help="check every signature, chain, evidence and decision")
    verify.add_argument("report", type=Path, help="the report (COSE_Sign1 CBOR file)")
    appraisal_cli.add_verifier_options(verify)
    verify.add_argument(
        "--allow-no-isolation",
        action="store_true",
        help="accept a report whose engine ran with [run] isolation = 'none'",
    )
    verify.add_argument(
        "--collateral", type=Path, help="directory of vendor collateral (Intel PCS files...): TCB evaluated"
    )
    verify.add_argument(
        "--online", action="store_true", help="also fetch fresh collateral (PCS/PCCS, KDS, RIM service)"
    )
    verify.add_argument("--pccs-url", metavar="ROOT", help="with --online: Intel PCS or PCCS root")
    verify.add_argument("--kds-url", metavar="ROOT", help="with --online: AMD KDS root")
    verify.add_argument("--rim-url", metavar="ROOT", help="with --online: NVIDIA RIM service root")
    verify.add_argument("--snp-product", help="with --online: milan, genoa or turin (SEV-SNP report v2)")
    verify.add_argument(
        "--accept-tcb", metavar="STATUS,...", help="accepted TDX TCB statuses (default UpToDate)"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    verify.set_defaults(func=cmd_report_verify)

    chain_cli.add_commands(sub, report)

    rep = sub.add_parser("replay", help="compare your copies of the inputs with a report")
    rep.add_argument("report", type=Path, help="the report (COSE_Sign1 CBOR file)")
    rep.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="ROLE[:NAME]=PATH",
        help="your copy of an input: engine=PATH, config=PATH, dataset:NAME=PATH (repeatable)",
    )
    appraisal_cli.add_verifier_options(rep)
    rep.add_argument(
        "--partial", action="store_true", help="exit 0 although some of the report's inputs were not given"
    )
    rep.add_argument(
        "--allow-no-isolation", action="store_true", help="accept an engine run with isolation 'none'"
    )
    rep.set_defaults(func=cmd_replay)

    from certs.ca.cli import add_parser as add_ca_parser

    add_ca_parser(sub).set_defaults(setup_logging=_ca_logging)
    opscli.add_parsers(sub)

    evidence = sub.add_parser("evidence", help="verify hardware evidence").add_subparsers(
        dest="evidence_command", required=True
    )
    ev = evidence.add_parser("verify", add_help=False, help="offline verification of hardware evidence")
    ev.add_argument("--type", choices=sorted(_EVIDENCE_CLIS), help="the kind of evidence")
    ev.set_defaults(func=cmd_evidence_verify, passthrough=True)

    from loader.cli import party_cli

    party_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from certs.chain import quiet_serial_warnings_globally

    argv = sys.argv[1:] if argv is None else argv
    quiet_serial_warnings_globally()
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
