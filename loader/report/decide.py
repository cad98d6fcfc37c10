"""Run or abort: compare what was measured with what was approved, listing every reason.

The same function runs in the loader and in `report verify`, which re-derives the decision
from the report's own inputs and approved list instead of trusting the recorded verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loader.report.policy import ApprovedList, Execution


@dataclass(frozen=True)
class Measured:
    role: str
    name: str
    digest: str
    kind: str

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
    execution: Execution,
    gpus: int = 0,
    pending: Sequence[str] = (),
) -> list[str]:
    """Every reason not to run; `gpus` is the number of GPU evidence entries collected,
    `execution` how the loader's configuration runs the engine and where the output goes.

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
        else:
            if got[0].kind != approved.kind:
                reasons.append(f"{label}: kind {got[0].kind} does not match the approved {approved.kind}")
            if got[0].digest != approved.digest:
                reasons.append(
                    f"{label}: digest {got[0].digest} does not match the approved {approved.digest}"
                )
    for m in measured:
        if policy.find(m.role, m.name) is None:
            reasons.append(f"{m.label}: not in the approved list")
    for name in pending:
        if policy.find("dataset", name) is None:
            reasons.append(f"{_label('dataset', name)}: not in the approved list")
    return reasons + execution_differences(policy.execution, execution)


def execution_differences(approved: Execution, configured: Execution) -> list[str]:
    """Every way the configured execution differs from the approved one, one reason each."""
    out = []
    for name in ("runtime", "command", "network", "platform", "isolation"):
        want, got = getattr(approved, name), getattr(configured, name)
        if want != got:
            out.append(f"run.{name}: configured {_show(got)}, but the approved list says {_show(want)}")
    if approved.timeout_ms != configured.timeout_ms:
        out.append(
            f"run.timeout: configured {configured.timeout_ms / 1000:g} s, "
            f"but the approved list says {approved.timeout_ms / 1000:g} s"
        )
    want_env, got_env = dict(approved.env), dict(configured.env)
    for key in sorted(set(want_env) | set(got_env)):
        if key not in want_env:
            out.append(f"run.env.{key}: configured {got_env[key]!r}, but the approved list does not name it")
        elif key not in got_env:
            out.append(f"run.env.{key}: approved as {want_env[key]!r}, but not configured")
        elif want_env[key] != got_env[key]:
            out.append(f"run.env.{key}: configured {got_env[key]!r}, but approved as {want_env[key]!r}")
    if approved.recipient != configured.recipient:
        out.append(
            f"output.recipient: configured {configured.recipient or 'none (output in the clear)'}, "
            f"but the approved list says {approved.recipient or 'none (output in the clear)'}"
        )
    return out


def _show(value: object) -> str:
    import json

    return "null" if value is None else json.dumps(value if not isinstance(value, tuple) else list(value))
