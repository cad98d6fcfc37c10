"""Replay: measure the verifier's own copies of the inputs and compare with a report.

The report's signature is checked first (a report whose payload was altered proves nothing);
each input given on the command line is then hashed exactly as the loader hashed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loader.errors import InputError, LoaderError, ReportError
from loader.measure import format_for_kind, measure
from loader.report import Report, parse_report
from loader.verify import Verification, check_signer


@dataclass(frozen=True)
class ReplayItem:
    role: str
    name: str
    path: Path
    recorded: str
    approved: str | None
    found: str

    @property
    def matches(self) -> bool:
        return self.found == self.recorded

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


def replay(raw: bytes, args: list[str]) -> tuple[Verification, list[ReplayItem]]:
    check = Verification()
    try:
        report = parse_report(raw)
    except ReportError as exc:
        check.add("format", False, str(exc))
        return check, []
    check.add("format", True, "report parsed")
    if not check_signer(check, report):
        return check, []
    items = []
    for arg in args:
        role, name, path = parse_input_arg(arg)
        item = _recorded(report, role, name)
        try:
            found = measure(path, format=format_for_kind(str(item["kind"]))).digest
        except InputError as exc:
            raise LoaderError(str(exc)) from exc
        items.append(
            ReplayItem(role, str(item["name"]), path, str(item["digest"]), item["expected"], found)  # type: ignore[arg-type]
        )
    return check, items
