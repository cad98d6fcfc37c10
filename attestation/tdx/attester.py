"""The TDX attester: quotes through configfs-tsm, RTMR extension through the tdx_guest sysfs.

collect(): the kernel's configfs-tsm with provider "tdx_guest" turns the 64-byte inblob into a
TDREPORT and the host's quote service into a signed quote. The quote is parsed here only to fail
early on garbage; its binding to report_data, signatures and TCB are the verifier's job.

extend(): Linux (6.16+) exposes RTMR2/RTMR3 as <sysfs>/measurements/rtmrN:sha384; writing 48
bytes extends the register, reading returns its value. The file is opened without O_CREAT, so
on a machine without TDX the write fails instead of creating a file.
"""

from __future__ import annotations

from pathlib import Path

from attestation import tsm
from attestation.errors import AttesterFailure, AttesterUnavailable, EvidenceFormatError
from attestation.evidence import Evidence
from attestation.rtmr import RTMR_LEN
from attestation.tdx import quote

PROVIDER = "tdx_guest"
MEASUREMENTS_DIR = Path("sys/devices/virtual/misc/tdx_guest/measurements")
EXTENDABLE = (2, 3)


class TdxAttester:
    tee = "tdx"

    def __init__(
        self, root: Path = Path("/"), ops: tsm.ConfigfsOps | None = None, *, rtmr: int = 3, **_options: object
    ) -> None:
        if rtmr not in EXTENDABLE:
            raise AttesterFailure(f"tdx: rtmr must be one of {EXTENDABLE}, got {rtmr}")
        self.root = root
        self.ops: tsm.ConfigfsOps = ops or tsm.OsOps()
        self.rtmr = rtmr

    def collect(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise AttesterFailure(f"tdx: report_data must be 64 bytes, got {len(report_data)}")
        report = tsm.get_report(self.root, report_data, expected_provider=PROVIDER, ops=self.ops)
        try:
            quote.parse(report.outblob)
        except EvidenceFormatError as exc:
            raise AttesterFailure(f"tdx: configfs-tsm returned an unusable quote: {exc}") from exc
        aux = {"auxblob": report.auxblob} if report.auxblob else {}
        return Evidence(type="tdx", data=report.outblob, aux=aux)

    def register_path(self, index: int) -> Path:
        return self.root / MEASUREMENTS_DIR / f"rtmr{index}:sha384"

    def extend(self, digest: bytes, event: str) -> None:
        """Extend the configured RTMR (3 by default) with a 48-byte value; `event` names it in errors."""
        if len(digest) != RTMR_LEN:
            raise AttesterFailure(
                f"tdx: extend value for {event!r} must be {RTMR_LEN} bytes, got {len(digest)}"
            )
        path = self.register_path(self.rtmr)
        try:
            self.ops.write(path, digest)
        except FileNotFoundError as exc:
            raise AttesterUnavailable(f"tdx: {path} not found (kernel without TDX RTMR sysfs?)") from exc
        except OSError as exc:
            raise AttesterFailure(
                f"tdx: extending rtmr{self.rtmr} for {event!r} failed: {exc.strerror or exc}"
            ) from exc

    def read_rtmr(self, index: int) -> bytes:
        path = self.register_path(index)
        try:
            value = self.ops.read(path)
        except OSError as exc:
            raise AttesterFailure(f"tdx: cannot read {path}: {exc.strerror or exc}") from exc
        if len(value) != RTMR_LEN:
            raise AttesterFailure(f"tdx: {path} holds {len(value)} bytes, expected {RTMR_LEN}")
        return value
