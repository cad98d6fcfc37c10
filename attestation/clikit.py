"""Shared pieces of the `evidence verify` command line of every backend.

Exit codes (DESIGN): 0 verified, 1 rejected (a check failed, including malformed evidence),
2 usage or I/O error. Results go to stdout (with --json, one JSON object); errors to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path

from attestation.errors import AttestationError
from attestation.evidence import Result
from attestation.reference import Appraisal, appraised

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or unreadable files: exit 2."""


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 to an aware UTC datetime; a naive time is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, found {text!r}") from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def hex_arg(size: int) -> Callable[[str], bytes]:
    """An argparse type for a `size`-byte value given as hex text: the same rule for every
    evidence type and option (an optional 0x prefix, either case, nothing else)."""

    def convert(text: str) -> bytes:
        digits = text[2:] if text[:2] in ("0x", "0X") else text
        if len(digits) != 2 * size or not set(digits.encode("ascii", "replace")) <= _HEX_DIGITS:
            raise argparse.ArgumentTypeError(
                f"expected {size} bytes as {2 * size} hex digits, "
                f"found {text[:40]!r} ({len(digits)} characters)"
            )
        return bytes.fromhex(digits)

    return convert


def evidence_bytes(raw: bytes) -> bytes:
    """Evidence files are accepted as raw bytes or as hex text (as nvtrust and many tools store
    them), for every evidence type alike: text that is only hex digits (and surrounding
    whitespace, an optional 0x) is decoded; anything else is taken as raw bytes."""
    text = raw.strip()
    if text[:2] in (b"0x", b"0X"):
        text = text[2:]
    if text and len(text) % 2 == 0 and set(text) <= _HEX_DIGITS:
        return bytes.fromhex(text.decode("ascii"))
    return raw


def add_common(parser: argparse.ArgumentParser, *, allow_debug: bool = True) -> None:
    """--at, --json and the appraisal options (--reference, --any-image, --allow-debug)."""
    parser.add_argument("--at", type=parse_time, default=None, help="evaluation time (default: now)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--reference", type=Path, metavar="FILE", help="reference values the platform must match"
    )
    parser.add_argument(
        "--any-image",
        action="store_true",
        help="accept any image (no reference values): said in the output; never for production",
    )
    if allow_debug:
        parser.add_argument(
            "--allow-debug", action="store_true", help="accept a debug TEE (the host can read its memory)"
        )


def appraisal_of(args: argparse.Namespace) -> Appraisal:
    """The appraisal the command line asks for; a bad reference file is a usage error."""
    from attestation.reference import ReferenceError, load_reference

    try:
        reference = load_reference(args.reference) if args.reference else None
    except ReferenceError as exc:
        raise UsageError(str(exc)) from exc
    return Appraisal(reference, any_image=args.any_image, allow_debug=args.allow_debug)


def read_file(path: Path, what: str, limit: int = 16 << 20) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise UsageError(f"{path}: {what} is {size} bytes, more than the {limit} allowed")
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc


def emit(result: Result, *, as_json: bool, source: str, appraisal: Appraisal | None = None) -> int:
    """Appraise `result` (when verified and `appraisal` is given), print it on stdout (the checks,
    then one line) and return the exit code."""
    summary = sys.stderr if as_json else sys.stdout  # with --json, stdout holds the object only
    if appraisal is not None and result.ok:
        result = appraised(result, appraisal)
    if as_json:
        extra = {"appraisal": appraisal.to_json()} if appraisal is not None else {}
        payload = {"file": source, **result.to_json(), **extra}
        json.dump(payload, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for check in result.checks:
            mark = "ok  " if check.passed else "FAIL"
            print(f"{mark} {check.name}: {check.detail}")
    if result.ok:
        status = f", TCB {result.tcb_status}" if result.tcb_status else ""
        warn = "; ANY IMAGE ACCEPTED (--any-image)" if appraisal is not None and appraisal.any_image else ""
        print(f"{source}: verified ({result.type}{status}{warn})", file=summary)
        return EXIT_OK
    print(f"{source}: rejected: {result.reason()}", file=summary)
    return EXIT_REJECTED


def run_guarded(body: Callable[[], int], *, as_json: bool = False) -> int:
    """Run a command body, mapping errors to one-line messages and exit codes."""
    try:
        return body()
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE, as_json)
    except AttestationError as exc:
        return fail(str(exc), EXIT_REJECTED, as_json)


def fail(message: str, code: int, as_json: bool) -> int:
    """Report a one-line error (also as JSON when asked) and return the exit code."""
    if as_json:
        json.dump({"ok": False, "error": message}, sys.stdout)
        sys.stdout.write("\n")
    print(f"error: {message}", file=sys.stderr)
    return code
