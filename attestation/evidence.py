"""Data types shared by every attester and verifier."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_EVIDENCE_BYTES = 1 << 20
"""Upper bound on one evidence blob; real quotes and reports are a few KiB."""


@dataclass(frozen=True)
class Evidence:
    """One piece of hardware (or mock) evidence as produced by an attester.

    `type` names the verifier ("tdx", "sev-snp", "nvidia", "mock"); `data` is the signed
    blob exactly as the hardware produced it; `aux` carries what a verifier needs beside it
    (certificate chains, SNP certificate tables...) keyed by name.
    """

    type: str
    data: bytes
    aux: Mapping[str, bytes] = field(default_factory=dict)

    def to_cbor_obj(self) -> dict[str, Any]:
        return {"type": self.type, "data": self.data, "aux": dict(sorted(self.aux.items()))}

    @classmethod
    def from_cbor_obj(cls, obj: object) -> Evidence:
        from attestation.errors import EvidenceFormatError

        if not isinstance(obj, dict) or set(obj) != {"type", "data", "aux"}:
            raise EvidenceFormatError("evidence entry: expected a map with type, data, aux")
        kind, data, aux = obj["type"], obj["data"], obj["aux"]
        if not isinstance(kind, str) or not isinstance(data, bytes) or not isinstance(aux, dict):
            raise EvidenceFormatError("evidence entry: type must be text, data bytes, aux a map")
        if len(data) > MAX_EVIDENCE_BYTES:
            raise EvidenceFormatError(
                f"evidence entry: {len(data)} bytes, more than the {MAX_EVIDENCE_BYTES} allowed"
            )
        for k, v in aux.items():
            if not isinstance(k, str) or not isinstance(v, bytes):
                raise EvidenceFormatError("evidence entry: aux must map text to bytes")
        return cls(type=kind, data=data, aux=dict(aux))


@dataclass(frozen=True)
class Check:
    """One named verification step and its outcome."""

    name: str
    passed: bool
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class Result:
    """Outcome of verifying one piece of evidence.

    `claims` holds the decoded, verified fields (hex strings for binary values) so that
    validation against a policy and JSON output share one representation.
    `report_data` is the 64-byte value the hardware bound (or the GPU nonce), for the
    caller to compare with the binding it recomputes.
    """

    type: str
    checks: tuple[Check, ...]
    claims: Mapping[str, Any]
    report_data: bytes = b""
    tcb_status: str | None = None
    advisories: tuple[str, ...] = ()
    is_mock: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def reason(self) -> str:
        """One line naming the first failed check, for error messages."""
        bad = self.failures
        if not bad:
            return "all checks passed"
        first = bad[0]
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        return f"{self.type}: {first.name}: {first.detail}{more}"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ok": self.ok,
            "mock": self.is_mock,
            "tcb_status": self.tcb_status,
            "advisories": list(self.advisories),
            "report_data": self.report_data.hex(),
            "checks": [c.to_json() for c in self.checks],
            "claims": dict(self.claims),
        }


@dataclass(frozen=True)
class Trust:
    """What a verifier may rely on beyond the evidence itself.

    `roots` maps a trust-anchor name to PEM/DER bytes (vendor roots override the bundled
    ones); `collateral` maps a name to bytes (TCB info, CRLs, RIMs); `allow_mock` must be set
    explicitly for mock evidence to pass.
    """

    allow_mock: bool = False
    roots: Mapping[str, bytes] = field(default_factory=dict)
    collateral: Mapping[str, bytes] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


class Attester(Protocol):
    """A source of evidence on this machine."""

    tee: str

    def collect(self, report_data: bytes) -> Evidence: ...

    def extend(self, digest: bytes, event: str) -> None: ...


class Verifier(Protocol):
    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes | None,
        trust: Trust,
        at: dt.datetime,
    ) -> Result: ...


class ChecksBuilder:
    """Collects named checks in order; a helper for verifiers that run many steps."""

    def __init__(self) -> None:
        self._checks: list[Check] = []

    def add(self, name: str, passed: bool, detail: str = "") -> bool:
        self._checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    def ok(self, name: str, detail: str = "") -> None:
        self.add(name, True, detail)

    def fail(self, name: str, detail: str) -> None:
        self.add(name, False, detail)

    @property
    def all_passed(self) -> bool:
        return all(c.passed for c in self._checks)

    def build(self) -> tuple[Check, ...]:
        return tuple(self._checks)
