"""RTMR extension arithmetic and replay of an event log.

TDX extends a runtime measurement register as RTMR = SHA-384(RTMR ‖ value), value 48 bytes,
from an initial 48 zero bytes. The loader records each value it extends into RTMR3 with the
event that caused it; a verifier replays that list and compares with RTMR3 in the quote.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

RTMR_LEN = 48
EVENT_TAG = b"trusted-loader/rtmr3-event/v1\x00"


def extend(current: bytes, value: bytes) -> bytes:
    if len(current) != RTMR_LEN or len(value) != RTMR_LEN:
        raise ValueError(
            f"RTMR extend: register and value must be {RTMR_LEN} bytes, got {len(current)} and {len(value)}"
        )
    return hashlib.sha384(current + value).digest()


def replay(values: Iterable[bytes]) -> bytes:
    """The register value after extending each of `values`, in order, from zero."""
    register = bytes(RTMR_LEN)
    for value in values:
        register = extend(register, value)
    return register


def event_value(event: str) -> bytes:
    """A 48-byte extend value for an event text such as "engine:sha256:<hex>".

    Hashing the whole text (not only the digest) binds the role and name of each input into the
    register, so a verifier replaying the report's event log needs nothing but that log.
    """
    return hashlib.sha384(EVENT_TAG + event.encode("utf-8")).digest()
