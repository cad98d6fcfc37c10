"""The workload boundary in RTMR3 (docs/containment.md).

Before the engine starts, the loader extends RTMR3 with a `workload-start` event. Evidence
whose RTMR3 history includes that event was made after a workload ran in this VM: it speaks for
that workload, not for the loader. The report carries the value the loader read before its first
extension (`rtmr3.initial`, which must be the boot value, zero: one job per boot) and its event
log; a verifier replays the log from there and finds the RTMR3 of the key's evidence at a point
before any workload start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attestation import rtmr

WORKLOAD_START = "workload-start"
BOOT_VALUE = bytes(rtmr.RTMR_LEN)
NO_REGISTER = "SEV-SNP has no runtime register: containment is the only defence"


def not_at_boot_value(initial: bytes) -> str | None:
    """Why the loader must not go on with this RTMR3 value, or None."""
    if initial == BOOT_VALUE:
        return None
    return (
        f"RTMR3 is {initial.hex()[:16]}… before the loader's first extension, not its boot value (zero): "
        "something already ran in this VM; start a new VM for a new job"
    )


def appraise(evidence_rtmr3: bytes | None, record: Any, events: Sequence[Any]) -> tuple[bool, str]:
    """Is the key's evidence from before any workload started? (passed, detail)."""
    if evidence_rtmr3 is None:
        if record is None:
            return True, NO_REGISTER
        return False, "the report carries an RTMR3 record but the evidence has no RTMR3"
    if not isinstance(record, dict) or not isinstance(record.get("initial"), bytes):
        return False, "the evidence has an RTMR3 but the report carries no rtmr3.initial"
    initial = record["initial"]
    if (why := not_at_boot_value(initial)) is not None:
        return False, why
    value, started = initial, False
    for index in range(len(events) + 1):
        if value == evidence_rtmr3:
            if started:
                return False, (
                    "the evidence's RTMR3 includes a workload start: it was made after a workload "
                    "ran in this VM and speaks for that workload, not for the loader"
                )
            return True, f"the evidence was made after {index} of {len(events)} events, before any workload"
        if index < len(events):
            event = events[index]
            if len(event["value"]) != rtmr.RTMR_LEN:
                return False, f"events[{index}]: the value is not {rtmr.RTMR_LEN} bytes"
            started = started or event.get("event") == WORKLOAD_START
            value = rtmr.extend(value, event["value"])
    return False, "the evidence's RTMR3 is not reached by replaying the report's event log from rtmr3.initial"
