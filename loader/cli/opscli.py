"""Operations commands: `config check`, `install-unit`, and `report show` (text, JSON, HTML).

loader.cli.commands calls `add_parsers(subparsers)`; each command returns an exit code and raises
LoaderError (one line) for usage and I/O problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from loader.cli.files import load_ca, read_bounded
from loader.errors import EXIT_OK, EXIT_REJECTED, LoaderError

DEFAULT_CONFIG = Path("/etc/trusted-loader/loader.toml")
UNIT_NAME = "trusted-loader.service"
RULES_NAME = "70-trusted-loader.rules"
SYSUSERS_NAME = "trusted-loader.sysusers"
# tee -> the systemd device unit of its guest device (systemd-escape --path)
DEVICE_UNITS = {"tdx": "dev-tdx_guest.device", "sev-snp": "dev-sev\\x2dguest.device"}


def cmd_config_check(args: argparse.Namespace) -> int:
    """The file's shape (load_config), then exactly what `run` validates before it attests
    (loader.boot.preflight): what run would refuse, check refuses, naming the file and the key."""
    from loader.boot.config import load_config
    from loader.boot.preflight import preflight
    from loader.boot.sandbox import check_settings
    from loader.boot.secretfiles import active

    cfg = load_config(args.file)
    warnings = preflight(cfg)
    check_settings(cfg.run)  # as `run` does before it starts the engine (there: a signed abort)
    overrides = active()
    differences = _consent_differences(cfg)
    if args.json:
        doc = {
            "ok": not differences,
            "consent": differences,
            "file": str(cfg.path),
            "tee": cfg.tee,
            "job_id": cfg.job_id,
            "inputs": [
                {"role": i.role, "name": i.name, "path": str(i.path), "staging": i.staging}
                for i in cfg.inputs
            ],
            "wipe": cfg.wipe,
            "directories": {
                "staging_dir": str(cfg.staging_dir),
                "spool_dir": str(cfg.spool_dir),
                "output_dir": str(cfg.output_dir),
            },
            "overrides": overrides,
            "warnings": warnings,
        }
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    for key, path in sorted(overrides.items()):
        print(f"{args.file}: {key} overridden from the environment: {path}", file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for reason in differences:
        print(f"FAIL {reason}", file=sys.stderr)
    if differences:
        print(
            f"{args.file}: valid, but `run` would abort: the approved list does not consent", file=sys.stderr
        )
        return EXIT_REJECTED
    print(f"{args.file}: valid (tee {cfg.tee}, {len(cfg.inputs)} inputs)", file=sys.stderr)
    return EXIT_OK


def _consent_differences(cfg: Any) -> list[str]:
    """How the configured execution differs from the approved list's, by the decision's own
    comparison (loader/report/decide.py); nothing when the list is not there yet or does not parse
    (`run` reports that itself)."""
    from loader.errors import PolicyError
    from loader.report.decide import execution_differences
    from loader.report.partykeys import key_id_text, load_public
    from loader.report.policy import load_policy

    try:
        policy = load_policy(cfg.policy_path)
        recipient = (
            load_public(cfg.output_recipient, "output recipient key") if cfg.output_recipient else None
        )
    except (PolicyError, LoaderError):
        return []
    return execution_differences(
        policy.execution, cfg.run.execution(key_id_text(recipient) if recipient else None)
    )


def _exec_argv(explicit: str | None) -> list[str]:
    if explicit:
        if not explicit.startswith("/"):
            raise LoaderError(f"--exec: expected an absolute path, found {explicit!r}")
        return [explicit]
    script = Path(sys.executable).parent / "trusted-loader"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "loader"]


def _device_deps(tee: str | None) -> str:
    unit = DEVICE_UNITS.get(tee or "")
    if unit is None:
        return "# no TEE device dependency (tee not tdx or sev-snp): see docs/operations.md"
    return f"Wants={unit}\nAfter={unit}"


def _load_for_unit(path: Path) -> Any:
    from loader.boot.config import load_config

    if not path.exists():
        print(f"install-unit: {path} does not exist yet; no TEE device dependency", file=sys.stderr)
        return None
    return load_config(path)


def _tee_for(args: argparse.Namespace, cfg: Any) -> str | None:
    if args.tee != "from-config":
        return None if args.tee == "none" else str(args.tee)
    return None if cfg is None else str(cfg.tee)


# What the unit leaves writable under ProtectSystem=strict: its StateDirectory= (and, private
# to the unit and emptied when it stops, PrivateTmp='s /tmp and /var/tmp).
UNIT_STATE_DIR = Path("/var/lib/trusted-loader")
_UNIT_PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108 (names, never written)


def sandbox_warnings(cfg: Any) -> list[str]:
    """One line per configured directory the unit's sandbox would not let the loader keep."""
    from loader.boot.preflight import written_dirs

    found = []
    for key, path in written_dirs(cfg, cfg.publish):
        if path == UNIT_STATE_DIR or path.is_relative_to(UNIT_STATE_DIR):
            continue
        if any(path.is_relative_to(t) for t in _UNIT_PRIVATE_TMP):
            found.append(
                f"{cfg.path}: {key}: {path} is in the unit's private /tmp, emptied when the unit stops; "
                f"use a path under {UNIT_STATE_DIR}"
            )
        else:
            found.append(
                f"{cfg.path}: {key}: {path} is read-only under the unit's ProtectSystem=strict; "
                f"use a path under {UNIT_STATE_DIR} (or add it to ReadWritePaths=)"
            )
    return found


def render_unit(*, exec_argv: list[str], config: Path, tee: str | None) -> str:
    """The unit with its placeholders filled; refuses values systemd would reinterpret."""
    template = resources.files("loader.systemd").joinpath(UNIT_NAME).read_text(encoding="utf-8")
    for value in [*exec_argv, str(config)]:
        if not value or any(c.isspace() or c in "\"'\\%$;" or not c.isprintable() for c in value):
            raise LoaderError(f"install-unit: {value!r} contains characters a unit file would reinterpret")
    return (
        template.replace("@EXEC@", " ".join(exec_argv))
        .replace("@CONFIG@", str(config))
        .replace("@DEVICE_DEPS@", _device_deps(tee))
    )


def _write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise LoaderError(f"{path}: exists; pass --force to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
    except OSError as exc:
        raise LoaderError(f"{path}: cannot write: {exc.strerror}") from exc
    print(f"wrote {path}", file=sys.stderr)


def cmd_install_unit(args: argparse.Namespace) -> int:
    if not args.config.is_absolute():
        raise LoaderError(f"--config: expected an absolute path, found {str(args.config)!r}")
    cfg = _load_for_unit(args.config) if args.tee == "from-config" or args.config.exists() else None
    for warning in sandbox_warnings(cfg) if cfg is not None else []:
        print(f"warning: {warning}", file=sys.stderr)
    unit = render_unit(exec_argv=_exec_argv(args.exec), config=args.config, tee=_tee_for(args, cfg))
    prefix = args.prefix
    _write(prefix / "etc/systemd/system" / UNIT_NAME, unit, args.force)
    rules = resources.files("loader.systemd").joinpath(RULES_NAME).read_text(encoding="utf-8")
    _write(prefix / "etc/udev/rules.d" / RULES_NAME, rules, args.force)
    users = resources.files("loader.systemd").joinpath(SYSUSERS_NAME).read_text(encoding="utf-8")
    _write(prefix / "etc/sysusers.d" / "trusted-loader.conf", users, args.force)
    print(
        "next: systemd-sysusers && systemctl daemon-reload && systemctl enable trusted-loader.service",
        file=sys.stderr,
    )
    return EXIT_OK


def _verification(args: argparse.Namespace, raw: bytes) -> Any:
    from loader.cli.appraisal_cli import appraisal_from
    from loader.report.verify import verify_report

    appraisal = appraisal_from(args, args.at)
    return verify_report(
        raw, ca=load_ca(args.ca), at=args.at, allow_mock=args.allow_mock, appraisal=appraisal
    )


def cmd_report_show(args: argparse.Namespace) -> int:
    """Text (default), --json or --html; verified too unless --no-verify.

    Exit 0 whenever the report could be rendered, verified or not (the verification outcome
    is part of what is shown); `report verify` is the command whose exit code is the verdict.
    """
    from loader.errors import ReportError
    from loader.report.document import parse_report
    from loader.report.html import render_html
    from loader.report.show import render_text

    raw = read_bounded(args.report, "report")
    try:
        report = parse_report(raw)
    except ReportError as exc:
        raise ReportError(f"{args.report}: {exc}") from None
    check = None if args.no_verify else _verification(args, raw)
    if args.json:
        text = json.dumps(_json_doc(report, check), indent=2) + "\n"
    elif args.html:
        text = render_html(report, check)
    else:
        text = render_text(report, check)
    if args.output:
        from loader.publish.spool import atomic_write

        atomic_write(args.output, text.encode("utf-8"))
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _json_doc(report: Any, check: Any) -> dict[str, Any]:
    """Trust first, then the verification, then the decision, then the rest of the payload."""
    from loader.cli.commands import _jsonable
    from loader.report.show import trust_of

    payload = _jsonable(report.payload)
    doc: dict[str, Any] = {
        "trust": trust_of(check),
        "verification": None if check is None else check.to_json(),
        "decision": payload.pop("decision"),
        "digest": report.digest,
    }
    doc.update(sorted(payload.items()))
    doc["certificates"] = [c.subject.rfc4514_string() for c in report.chain]
    return doc


def add_report_show(report_sub: Any) -> None:
    show = report_sub.add_parser("show", help="readable summary (or --json, --html) of a report")
    show.add_argument("report", type=Path, help="the report (COSE_Sign1 CBOR file)")
    fmt = show.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the payload and verification as JSON")
    fmt.add_argument("--html", action="store_true", help="a self-contained HTML page for an auditor")
    show.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    show.add_argument("--no-verify", action="store_true", help="only decode; do not verify")
    from loader.cli import appraisal_cli

    appraisal_cli.add_verifier_options(show)
    show.set_defaults(func=cmd_report_show)


def add_parsers(sub: Any) -> None:
    config = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_command", required=True
    )
    check = config.add_parser("check", help="validate a loader configuration file")
    check.add_argument("file", type=Path, help="the loader configuration (TOML)")
    check.add_argument("--json", action="store_true", help="print the parsed inputs and warnings as JSON")
    check.set_defaults(func=cmd_config_check)

    unit = sub.add_parser("install-unit", help="install the systemd unit and udev rule")
    unit.add_argument("--prefix", type=Path, default=Path("/"), help="root to install under (default /)")
    unit.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the configuration the unit runs (default {DEFAULT_CONFIG})",
    )
    unit.add_argument("--exec", help="absolute path of the trusted-loader executable")
    unit.add_argument(
        "--tee",
        choices=["from-config", "tdx", "sev-snp", "none"],
        default="from-config",
        help="order the unit after this TEE's guest device (default: the config's tee)",
    )
    unit.add_argument("--force", action="store_true", help="replace existing files")
    unit.set_defaults(func=cmd_install_unit)
