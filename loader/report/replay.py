"""Replay: measure the verifier's own copies of the inputs and compare with a report.

The report is verified first, in full: signature, certificate, evidence and binding (a report
that does not verify proves nothing); each input given on the command line is then hashed
exactly as the loader hashed it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from attestation.reference import Appraisal
from loader.errors import InputError, LoaderError
from loader.measure.inputs import format_for_kind, measure
from loader.report.document import Report
from loader.report.verify import Verification, verify_report


@dataclass(frozen=True)
class ReplayItem:
    role: str
    name: str
    path: Path
    recorded: str
    approved: str | None
    found: str
    recorded_kind: str = ""
    found_kind: str = ""

    @property
    def matches(self) -> bool:
        """Same digest and same kind: a file holding a directory's listing has the directory's
        digest, but it is not the directory."""
        return self.found == self.recorded and self.found_kind == self.recorded_kind

    def difference(self) -> str:
        if self.found_kind != self.recorded_kind:
            return f"report has a {self.recorded_kind or 'missing'} input, found a {self.found_kind}"
        return f"report has {self.recorded}, found {self.found}"

    @property
    def label(self) -> str:
        return self.role if self.role != "dataset" else f"dataset {self.name!r}"


def parse_input_arg(text: str) -> tuple[str, str | None, Path]:
    """ROLE[:NAME]=PATH"""
    left, sep, path = text.partition("=")
    if not sep or not path:
        raise LoaderError(f"--input {text!r}: expected ROLE[:NAME]=PATH")
    role, _, name = left.partition(":")
    if role not in ("engine", "dataset", "config"):
        raise LoaderError(f"--input {text!r}: role must be engine, dataset or config")
    if role == "dataset" and not name:
        raise LoaderError(f"--input {text!r}: a dataset needs its name, as dataset:NAME=PATH")
    return role, name or None, Path(path)


def _recorded(report: Report, role: str, name: str | None) -> dict[str, object]:
    for item in report.payload["inputs"]:
        if item["role"] == role and (name is None or item["name"] == name):
            return item
    known = ", ".join(f"{i['role']}:{i['name']}" for i in report.payload["inputs"])
    raise LoaderError(f"--input {role}{':' + name if name else ''}: not in the report (it has {known})")


def replay(
    raw: bytes,
    args: list[str],
    *,
    ca: Sequence[x509.Certificate] = (),
    at: dt.datetime | None = None,
    allow_mock: bool = False,
    allow_no_isolation: bool = False,
    appraisal: Appraisal | None = None,
) -> tuple[Verification, list[ReplayItem]]:
    """Verify the report in full (as `report verify` does), then hash each input given.

    A signature alone proves nothing: anyone can sign a report with a key of their own. Only
    a report whose evidence binds its key vouches for the digests it records.
    """
    check = verify_report(
        raw,
        ca=ca,
        at=at,
        allow_mock=allow_mock,
        allow_no_isolation=allow_no_isolation,
        appraisal=appraisal,
    )
    if not check.ok or check.report is None:
        return check, []
    report = check.report
    items = []
    for arg in args:
        role, name, path = parse_input_arg(arg)
        item = _recorded(report, role, name)
        try:
            found = measure(path, format=format_for_kind(str(item["kind"])))
        except InputError as exc:
            raise LoaderError(str(exc)) from exc
        items.append(
            ReplayItem(
                role,
                str(item["name"]),
                path,
                str(item["digest"]),
                item["expected"],  # type: ignore[arg-type]
                found.digest,
                str(item["kind"]),
                found.kind,
            )
        )
    return check, items
