"""The mock attester: signs fresh evidence with the mock root.

Its RTMR3 lives in the mock TEE device, <root>/dev/mock-tee/rtmr3 (48 bytes, zero when absent),
when that directory exists: reachable by path, like the TDX sysfs register, so that tests can
show an engine cannot reach it. The mock VM "boots" with each attester: it zeroes the register.
Without the directory the registers are kept in memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
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
DEVICE = Path("dev/mock-tee")


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
        device = root / DEVICE
        self.device: Path | None = device if device.is_dir() else None
        if self.device is not None:  # the mock VM boots with each attester: RTMR3 starts at zero
            try:
                (self.device / "rtmr3").write_bytes(bytes(rtmr.RTMR_LEN))
            except OSError as exc:
                raise AttesterFailure(f"mock: cannot reset {self.device / 'rtmr3'}: {exc.strerror}") from exc

    def _rtmr3_path(self) -> Path | None:
        return None if self.device is None else self.device / "rtmr3"

    def _load(self) -> None:
        path = self._rtmr3_path()
        if path is None:
            return
        try:
            value = path.read_bytes()
        except FileNotFoundError:
            value = bytes(rtmr.RTMR_LEN)
        except OSError as exc:
            raise AttesterFailure(f"mock: cannot read {path}: {exc.strerror}") from exc
        if len(value) != rtmr.RTMR_LEN:
            raise AttesterFailure(f"mock: {path} holds {len(value)} bytes, expected {rtmr.RTMR_LEN}")
        self._registers["rtmr3"] = value

    def collect(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise AttesterFailure(f"mock: report_data must be 64 bytes, got {len(report_data)}")
        self._load()
        payload = mockfmt.encode_payload(report_data, dict(self._registers), int(time.time()))
        signature = private_key().sign(payload, ec.ECDSA(hashes.SHA384()))
        return Evidence(type="mock", data=mockfmt.encode(payload, signature))

    def extend(self, digest: bytes, event: str) -> None:
        """Extend mock RTMR3 as TDX does: RTMR3 = SHA-384(RTMR3 ‖ digest), digest 48 bytes."""
        if len(digest) != rtmr.RTMR_LEN:
            raise AttesterFailure(f"mock: extend value must be 48 bytes, got {len(digest)}")
        path = self._rtmr3_path()
        if path is None:
            self._registers["rtmr3"] = rtmr.extend(self._registers["rtmr3"], digest)
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AttesterFailure(f"mock: cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.pread(fd, rtmr.RTMR_LEN + 1, 0) or bytes(rtmr.RTMR_LEN)
            if len(current) != rtmr.RTMR_LEN:
                raise AttesterFailure(f"mock: {path} holds {len(current)} bytes, expected {rtmr.RTMR_LEN}")
            value = rtmr.extend(current, digest)
            os.pwrite(fd, value, 0)
            os.ftruncate(fd, rtmr.RTMR_LEN)
            self._registers["rtmr3"] = value
        finally:
            os.close(fd)

    def register(self, name: str) -> bytes:
        self._load()
        return self._registers[name]

    def read_rtmr(self, index: int) -> bytes:
        if index != 3:
            raise AttesterFailure(f"mock: only rtmr3 is readable, not rtmr{index}")
        return self.register("rtmr3")
