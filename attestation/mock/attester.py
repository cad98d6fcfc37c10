"""The mock attester: signs fresh evidence with the mock root; keeps mock RTMRs in memory."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import rtmr
from attestation.errors import AttesterFailure
from attestation.evidence import Evidence
from attestation.mock import format as mockfmt
from attestation.mock.root import private_key

MOCK_MRTD = hashlib.sha384(b"trusted-loader mock firmware").digest()


def reference_entry(name: str = "trusted-loader-mock") -> dict[str, object]:
    """The reference-values entry (attestation/reference.py) of the mock platform as booted:
    its firmware MRTD and RTMR0-3 before the loader extends RTMR3."""
    values = {"mrtd": [MOCK_MRTD.hex()], **{f"rtmr{i}": [bytes(48).hex()] for i in range(4)}}
    return {"name": name, "type": "mock", "values": values}


class MockAttester:
    tee = "mock"

    def __init__(self, root: Path = Path("/"), **_options: object) -> None:
        self._registers = {name: bytes(48) for name in mockfmt.REGISTERS}
        self._registers["mrtd"] = MOCK_MRTD

    def collect(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise AttesterFailure(f"mock: report_data must be 64 bytes, got {len(report_data)}")
        payload = mockfmt.encode_payload(report_data, dict(self._registers), int(time.time()))
        signature = private_key().sign(payload, ec.ECDSA(hashes.SHA384()))
        return Evidence(type="mock", data=mockfmt.encode(payload, signature))

    def extend(self, digest: bytes, event: str) -> None:
        """Extend mock RTMR3 as TDX does: RTMR3 = SHA-384(RTMR3 ‖ digest), digest 48 bytes."""
        if len(digest) != rtmr.RTMR_LEN:
            raise AttesterFailure(f"mock: extend value must be 48 bytes, got {len(digest)}")
        self._registers["rtmr3"] = rtmr.extend(self._registers["rtmr3"], digest)

    def register(self, name: str) -> bytes:
        return self._registers[name]
