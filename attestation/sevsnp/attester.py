"""The SEV-SNP attester: a report over the loader's report_data, with the host's certificates.

Interfaces, in order: configfs-tsm (provider "sev_guest"; `privlevel` sets the report's VMPL;
`auxblob` is the host's certificate table), then <root>/dev/sev-guest (SNP_GET_EXT_REPORT,
or SNP_GET_REPORT on kernels without it) when configfs-tsm is absent. Option `interface`
("auto", "configfs-tsm", "sev-guest") pins one. The report is parsed here so that a malformed
answer fails at collection time; whether it carries the right report_data is the verifier's
judgement, not the attester's.

SEV-SNP has no guest-extendable measurement register (no RTMR): `extend` keeps an in-memory
event log, bound to the evidence only through the loader's signed integrity report.
"""

from __future__ import annotations

from pathlib import Path

from attestation import tsm
from attestation.errors import AttesterFailure, AttesterUnavailable, EvidenceFormatError
from attestation.evidence import Evidence
from attestation.sevsnp import certtable, report
from attestation.sevsnp import ioctl as sevguest

PROVIDER = "sev_guest"
INTERFACES = ("auto", "configfs-tsm", "sev-guest")


class SnpAttester:
    tee = "sev-snp"
    can_extend = False

    def __init__(
        self,
        root: Path = Path("/"),
        ops: tsm.ConfigfsOps | None = None,
        ioctl: sevguest.IoctlFn | None = None,
        **options: object,
    ) -> None:
        unknown = sorted(set(options) - {"privlevel", "interface"})
        if unknown:
            raise AttesterFailure(f"sev-snp: unknown options {unknown}; expected privlevel, interface")
        privlevel = options.get("privlevel")
        if privlevel is not None and (isinstance(privlevel, bool) or privlevel not in range(4)):
            raise AttesterFailure(f"sev-snp: privlevel must be 0..3, found {privlevel!r}")
        interface = options.get("interface", "auto")
        if interface not in INTERFACES:
            raise AttesterFailure(
                f"sev-snp: interface must be one of {', '.join(INTERFACES)}, found {interface!r}"
            )
        self.root = Path(root)
        self.privlevel: int | None = privlevel  # type: ignore[assignment]
        self.interface = str(interface)
        self._ops = ops
        self._ioctl = ioctl
        self.events: list[tuple[str, bytes]] = []

    def collect(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise AttesterFailure(f"sev-snp: report_data must be 64 bytes, found {len(report_data)}")
        raw, table = self._fetch(report_data)
        try:
            report.parse(raw, what="sev-snp report from the guest interface")
            aux = certtable.parse(table, what="host certificate table").evidence_aux() if table else {}
        except EvidenceFormatError as exc:
            raise AttesterFailure(str(exc)) from exc
        return Evidence(type="sev-snp", data=raw, aux=aux)

    def _fetch(self, report_data: bytes) -> tuple[bytes, bytes]:
        reasons = []
        if self.interface in ("auto", "configfs-tsm"):
            try:
                got = tsm.get_report(
                    self.root,
                    report_data,
                    expected_provider=PROVIDER,
                    privlevel=self.privlevel,
                    ops=self._ops,
                )
                return got.outblob, got.auxblob
            except AttesterUnavailable as exc:
                if self.interface != "auto":
                    raise
                reasons.append(str(exc))
        try:
            dev = sevguest.get_report(self.root, report_data, vmpl=self.privlevel or 0, ioctl=self._ioctl)
        except AttesterUnavailable as exc:
            reasons.append(str(exc))
            raise AttesterUnavailable("sev-snp: no guest interface: " + "; ".join(reasons)) from exc
        return dev.report, dev.certs

    def extend(self, digest: bytes, event: str) -> None:
        if not 1 <= len(digest) <= 64:
            raise AttesterFailure(f"sev-snp: event digest must be 1..64 bytes, found {len(digest)}")
        self.events.append((event, bytes(digest)))
