"""Validation of a verified TDX quote against a policy (separate from verification).

Works on `Result.claims` as the verifier decoded them, so it applies equally to a quote verified
just now and to one whose claims were stored in a report. Unset fields are not checked; every
field that is set yields one named check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attestation.evidence import Check, Result

REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid", "mrowner", "mrownerconfig")
_SIZES = {
    "mrtd": 48,
    "rtmr0": 48,
    "rtmr1": 48,
    "rtmr2": 48,
    "rtmr3": 48,
    "mrconfigid": 48,
    "mrowner": 48,
    "mrownerconfig": 48,
}


@dataclass(frozen=True)
class TdxPolicy:
    """Expected values (bytes) for measurement registers, accepted TCB statuses, debug."""

    mrtd: bytes | None = None
    rtmr0: bytes | None = None
    rtmr1: bytes | None = None
    rtmr2: bytes | None = None
    rtmr3: bytes | None = None
    mrconfigid: bytes | None = None
    mrowner: bytes | None = None
    mrownerconfig: bytes | None = None
    accept_tcb: frozenset[str] = field(default_factory=lambda: frozenset({"UpToDate"}))
    require_tcb_evaluated: bool = True
    allow_debug: bool = False

    def __post_init__(self) -> None:
        for name in REGISTERS:
            value = getattr(self, name)
            if value is not None and len(value) != _SIZES[name]:
                raise ValueError(f"TDX policy: {name} must be {_SIZES[name]} bytes, got {len(value)}")


def _register(claims: Mapping[str, Any], name: str, expected: bytes) -> Check:
    found = claims.get(name)
    ok = isinstance(found, str) and found == expected.hex()
    detail = "matches" if ok else f"expected {expected.hex()}, found {found}"
    return Check(f"policy_{name}", ok, detail)


def validate(result: Result, policy: TdxPolicy) -> tuple[Check, ...]:
    """One check per policy item; a result that failed verification fails `policy_verified`."""
    claims = result.claims
    checks = [
        Check(
            "policy_verified",
            result.ok and result.type == "tdx",
            result.reason() if not result.ok else "verified",
        )
    ]
    for name in REGISTERS:
        expected = getattr(policy, name)
        if expected is not None:
            checks.append(_register(claims, name, expected))
    debug = claims.get("debug")
    checks.append(
        Check(
            "policy_debug",
            debug is False or (debug is True and policy.allow_debug),
            "debug TD allowed by policy"
            if debug is True and policy.allow_debug
            else "TD_ATTRIBUTES.DEBUG set: the host can read and modify TD memory"
            if debug is True
            else "not a debug TD"
            if debug is False
            else "debug attribute unknown",
        )
    )
    status = result.tcb_status
    if status is None:
        checks.append(
            Check("policy_tcb", not policy.require_tcb_evaluated, "TCB not evaluated (no collateral)")
        )
    else:
        ok = status in policy.accept_tcb
        checks.append(
            Check(
                "policy_tcb",
                ok,
                f"{status} ({'accepted' if ok else 'not in ' + ', '.join(sorted(policy.accept_tcb))})",
            )
        )
    return tuple(checks)
