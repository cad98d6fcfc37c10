"""Run or abort: compare what was measured with what was approved, listing every reason.

The same function runs in the loader and in `report verify`, which re-derives the decision
from the report's own inputs and approved list instead of trusting the recorded verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loader.policy import ApprovedList


@dataclass(frozen=True)
class Measured:
    role: str
    name: str
    digest: str

    @property
    def label(self) -> str:
        return self.role if self.role != "dataset" else f"dataset {self.name!r}"


def _label(role: str, name: str) -> str:
    return role if role != "dataset" else f"dataset {name!r}"


def decide(
    policy: ApprovedList,
    measured: Sequence[Measured],
    tee: str,
    *,
    gpus: int = 0,
    pending: Sequence[str] = (),
) -> list[str]:
    """Every reason not to run; `gpus` is the number of GPU evidence entries collected.

    `pending` names encrypted datasets whose plaintext is not yet measured: they are neither
    missing nor matching, and the loader decides again once they are decrypted."""
    reasons: list[str] = []
    if tee not in policy.tee:
        reasons.append(f"tee: {tee!r} is not allowed by the approved list (allowed: {', '.join(policy.tee)})")
    if policy.flags.get("require_gpu") and gpus == 0:
        reasons.append("gpu: the approved list requires GPU evidence and none was collected")
    for approved in policy.inputs:
        got = [m for m in measured if policy.find(m.role, m.name) == approved]
        label = _label(approved.role, approved.name)
        if not got and approved.role == "dataset" and approved.name in pending:
            continue
        if not got:
            reasons.append(f"{label}: approved but not provided")
        elif got[0].digest != approved.digest:
            reasons.append(f"{label}: digest {got[0].digest} does not match the approved {approved.digest}")
    for m in measured:
        if policy.find(m.role, m.name) is None:
            reasons.append(f"{m.label}: not in the approved list")
    for name in pending:
        if policy.find("dataset", name) is None:
            reasons.append(f"{_label('dataset', name)}: not in the approved list")
    return reasons
