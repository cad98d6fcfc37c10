"""The platform's collateral: fetched at boot, carried in the report, judged by one function.

At boot (after the evidence, before the decision) the loader fetches, for each piece of
hardware evidence, what judging it needs: Intel TCB Info, QE Identity and CRLs (PCS/PCCS), the
AMD VCEK, chain and CRL (KDS), NVIDIA driver and VBIOS RIMs (RIM service). The report carries
them in `collateral`:

  collateral {needed: bool,                       false only when every evidence is mock
              sets: [{evidence: int,              index into `evidence`
                      source: text,               the service root or offline directory
                      fetched: text,              RFC 3339 UTC
                      files: {name: bstr}}],      as the evidence's verifier reads collateral
              errors: [text]}                     what could not be fetched

`judge` is the one decision on it, for the boot and for `report verify`: the TCB must be
acceptable (TDX: a TCB status among the accepted ones, fresh collateral, CRLs checked; SEV-SNP:
the KDS VCEK for the reported TCB, chain and CRL; NVIDIA: every active measurement matches the
driver and VBIOS RIMs). Each judgement names the failed check, the status and the advisories.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation import AttestationError, Evidence, Trust, verifier_for
from attestation.evidence import Check, Result
from attestation.fetch import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT, Fetcher
from attestation.nvidia import rimservice
from attestation.sevsnp import kds, products
from attestation.tdx import pcs

MOCK_TYPES = frozenset({"mock", "mock-gpu"})
GPU_TYPES = frozenset({"nvidia"})
DEFAULT_ACCEPT = ("UpToDate",)
MAX_FILES = 16
MAX_FILE_BYTES = 4 << 20

# The checks of each verifier that judge the collateral (the rest judge the evidence itself).
_JUDGED = {
    "tdx": (
        "pck_chain",
        "pck_revocation",
        "collateral",
        "tcb_info",
        "tcb_info_fresh",
        "qe_identity",
        "qe_identity_fresh",
        "tcb_evaluation",
        "tcb_status",
    ),
    "sev-snp": (
        "certificate",
        "product",
        "report_signature",
        "chain",
        "chain_algorithms",
        "crl",
        "hwid",
        "tcb",
    ),
}


@dataclass(frozen=True)
class CollateralSettings:
    """[collateral] of the loader configuration."""

    pccs_url: str = pcs.INTEL_PCS
    kds_url: str = kds.AMD_KDS
    rim_url: str = rimservice.NVIDIA_RIM_SERVICE
    accept_tcb: tuple[str, ...] = DEFAULT_ACCEPT
    offline_dir: Path | None = None
    cache_dir: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    snp_product: str | None = None
    rim_root: Path | None = None
    ocsp_url: str | None = None
    """OCSP responder for the GPU certificate chain; None: revocation not checked (advisory)."""

    def roots(self) -> dict[str, bytes]:
        """Trust anchors replacing the bundled ones (only the NVIDIA RIM root is configurable)."""
        if self.rim_root is None:
            return {}
        try:
            with self.rim_root.open("rb") as f:
                return {"nvidia-rim": f.read(64 * 1024)}
        except OSError as exc:
            raise AttestationError(f"{self.rim_root}: cannot read the RIM root: {exc.strerror}") from exc

    def fetcher(self) -> Fetcher:
        return Fetcher(
            timeout=self.timeout,
            attempts=self.attempts,
            cache_dir=self.cache_dir,
            offline_dir=self.offline_dir,
        )


@dataclass(frozen=True)
class Judgement:
    evidence: int
    type: str
    ok: bool
    status: str | None
    advisories: tuple[str, ...]
    detail: str
    checks: tuple[tuple[str, bool, str], ...] = field(default=())

    def line(self) -> str:
        status = f"TCB {self.status}: " if self.status else ""
        adv = f"; advisories {', '.join(self.advisories)}" if self.advisories else ""
        return f"evidence[{self.evidence}] {self.type}: {status}{self.detail}{adv}"


# ---- fetching at boot --------------------------------------------------------------------------


def _snp_product(ev: Evidence, settings: CollateralSettings) -> products.Product:
    if settings.snp_product:
        return products.parse(settings.snp_product)
    from attestation.sevsnp import report, vcek

    rep = report.parse(ev.data)
    if rep.cpuid is not None and (found := products.from_cpuid(rep.cpuid[0], rep.cpuid[1])):
        return found
    blob = ev.aux.get("vcek") or ev.aux.get("vlek")
    if blob:
        from cryptography.hazmat.primitives import serialization

        from certs.chain import load_certificates

        cert = load_certificates(blob, what="VCEK from the host")[0]
        info = vcek.parse(cert.public_bytes(serialization.Encoding.DER))
        if info.product is not None:
            return info.product
    raise AttestationError("SEV-SNP product unknown (report v2 without a VCEK): set [collateral] snp_product")


def fetch_one(ev: Evidence, settings: CollateralSettings) -> tuple[str, dict[str, bytes]]:
    """(source, files) for one piece of hardware evidence."""
    fetcher = settings.fetcher()
    if ev.type == "tdx":
        root = settings.pccs_url
        files = pcs.PcsClient(root, fetcher).collateral(pcs.target_of(ev.data))
    elif ev.type == "sev-snp":
        root = settings.kds_url
        files = kds.KdsClient(root, fetcher).collateral(ev.data, _snp_product(ev, settings))
    elif ev.type in GPU_TYPES:
        root = settings.rim_url
        files = rimservice.RimServiceClient(root, fetcher).collateral(ev.data)
        chain = ev.aux.get("chain")
        if settings.ocsp_url and isinstance(chain, bytes):
            from attestation.nvidia import ocsp

            at = dt.datetime.now(dt.UTC)
            files = {**files, **ocsp.fetch_chain(chain, url=settings.ocsp_url, fetcher=fetcher, at=at)}
    else:
        raise AttestationError(f"no collateral client for evidence type {ev.type!r}")
    source = str(settings.offline_dir) if settings.offline_dir is not None else root
    return source, files


def fetch_record(evidence: Sequence[Evidence], settings: CollateralSettings | None) -> dict[str, Any]:
    """The report's `collateral` for `evidence`; what failed is listed under errors."""
    needed = any(ev.type not in MOCK_TYPES for ev in evidence)
    record: dict[str, Any] = {"needed": needed, "sets": [], "errors": []}
    for i, ev in enumerate(evidence):
        if ev.type in MOCK_TYPES:
            continue
        if settings is None:
            record["errors"].append(f"evidence[{i}] {ev.type}: no [collateral] source configured")
            continue
        try:
            source, files = fetch_one(ev, settings)
        except AttestationError as exc:
            record["errors"].append(f"evidence[{i}] {ev.type}: {exc}")
            continue
        fetched = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record["sets"].append({"evidence": i, "source": source, "fetched": fetched, "files": files})
    return record


# ---- judging -----------------------------------------------------------------------------------


def check_record(record: object) -> str | None:
    """Why `record` is not a well-formed `collateral` value, or None."""
    if not isinstance(record, dict) or set(record) != {"needed", "sets", "errors"}:
        return "collateral: expected a map with needed, sets and errors"
    if not isinstance(record["needed"], bool) or not isinstance(record["errors"], list):
        return "collateral: needed must be a boolean and errors a list"
    if not isinstance(record["sets"], list):
        return "collateral.sets: expected a list"
    for n, item in enumerate(record["sets"]):
        where = f"collateral.sets[{n}]"
        if not isinstance(item, dict) or set(item) != {"evidence", "source", "fetched", "files"}:
            return f"{where}: expected evidence, source, fetched and files"
        if not isinstance(item["evidence"], int) or isinstance(item["evidence"], bool):
            return f"{where}.evidence: expected an integer"
        files = item["files"]
        if not isinstance(files, dict) or len(files) > MAX_FILES:
            return f"{where}.files: expected a map of at most {MAX_FILES} files"
        for name, data in files.items():
            if not isinstance(name, str) or not isinstance(data, bytes) or len(data) > MAX_FILE_BYTES:
                return f"{where}.files: {name!r}: expected text name and at most {MAX_FILE_BYTES} bytes"
    return None


def files_for(record: Mapping[str, Any], index: int) -> dict[str, bytes] | None:
    sets = [s for s in record["sets"] if s["evidence"] == index]
    return dict(sets[0]["files"]) if len(sets) == 1 else None


def judge_one(
    index: int,
    ev: Evidence,
    files: Mapping[str, bytes] | None,
    *,
    at: dt.datetime,
    accept: Sequence[str] = DEFAULT_ACCEPT,
    expected_nonce: bytes | None = None,
    roots: Mapping[str, bytes] | None = None,
) -> Judgement:
    if ev.type in MOCK_TYPES:
        return Judgement(index, ev.type, True, None, (), "none needed for mock evidence")
    if not files:
        return Judgement(
            index, ev.type, False, None, (), "no collateral: the TCB of hardware evidence cannot be judged"
        )
    options: dict[str, Any] = {
        "accept_tcb": frozenset(accept),
        "require_collateral": True,
        "require_crl": True,
    }
    if ev.type in GPU_TYPES:
        options = {"require_rims": True}
    trust = Trust(roots=roots or {}, collateral=files, options=options)
    try:
        result = verifier_for(ev.type).verify(ev, expected_report_data=expected_nonce, trust=trust, at=at)
    except AttestationError as exc:
        return Judgement(index, ev.type, False, None, (), str(exc))
    if ev.type in GPU_TYPES:
        result = _with_recorded_ocsp(result, ev, files, at)
    names = _JUDGED.get(ev.type)
    judged = [c for c in result.checks if (c.name in names if names else c.name.startswith(("rim", "ocsp")))]
    if ev.type == "sev-snp" and not any(c.name == "crl" for c in judged):
        judged.append(Check("crl", False, "no CRL of the ARK in the collateral"))
    bad = [c for c in judged if not c.passed]
    checks = tuple((c.name, c.passed, c.detail) for c in judged)
    if not judged:
        return Judgement(index, ev.type, False, result.tcb_status, (), result.reason(), checks)
    if bad:
        more = f" (also failed: {', '.join(c.name for c in bad[1:])})" if len(bad) > 1 else ""
        detail = f"{bad[0].name}: {bad[0].detail}{more}"
    else:
        detail = f"acceptable at {at:%Y-%m-%dT%H:%M:%SZ}"
    return Judgement(index, ev.type, not bad, result.tcb_status, result.advisories, detail, checks)


def _with_recorded_ocsp(result: Result, ev: Evidence, files: Mapping[str, bytes], at: dt.datetime) -> Result:
    """The GPU result with the recorded OCSP answers judged at `at` (none recorded: unchanged)."""
    from dataclasses import replace

    from attestation.nvidia import ocsp

    chain = ev.aux.get("chain")
    if not isinstance(chain, bytes):
        return result
    try:
        checks = ocsp.recorded_checks(chain, files, at=at)
    except AttestationError as exc:
        checks = (Check("ocsp", False, str(exc)),)
    if not checks:
        return result
    advisories = tuple(a for a in result.advisories if not a.startswith(ocsp.NOT_CHECKED))
    return replace(result, checks=result.checks + checks, advisories=advisories)


def judge(
    evidence: Sequence[Evidence],
    record: Mapping[str, Any] | None,
    *,
    at: dt.datetime,
    accept: Sequence[str] = DEFAULT_ACCEPT,
    gpu_nonce: bytes | None = None,
    roots: Mapping[str, bytes] | None = None,
) -> list[Judgement]:
    """One judgement per piece of evidence, from the collateral in `record`."""
    out = []
    for i, ev in enumerate(evidence):
        files = files_for(record, i) if record is not None else None
        nonce = gpu_nonce if ev.type in GPU_TYPES else None
        j = judge_one(i, ev, files, at=at, accept=accept, expected_nonce=nonce, roots=roots)
        errors = [e for e in (record or {}).get("errors", []) if e.startswith(f"evidence[{i}] ")]
        if files is None and errors:
            j = Judgement(i, ev.type, False, None, (), f"no collateral: {errors[0].split(': ', 1)[-1]}")
        out.append(j)
    return out


def accept_list(value: object) -> tuple[str, ...]:
    """Validate an accepted-statuses list (configuration)."""
    from attestation.tdx.collateral import TCB_STATUSES

    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise ValueError("expected a non-empty list of TCB statuses")
    unknown = sorted(set(value) - TCB_STATUSES)
    if unknown:
        raise ValueError(f"unknown TCB status {unknown[0]!r}; expected some of {sorted(TCB_STATUSES)}")
    return tuple(value)


# ---- report verify -----------------------------------------------------------------------------


def report_checks(
    add: Any,
    payload: Mapping[str, Any],
    *,
    report_at: dt.datetime,
    now: dt.datetime,
    fresh: Mapping[str, bytes] | None = None,
    accept: Sequence[str] = DEFAULT_ACCEPT,
) -> list[dict[str, Any]]:
    """`tcb[i]` checks from the report's own collateral at `report_at`, and `tcb[i]:fresh` from
    fresher collateral (given or fetched) at `now`; returns both judgements for display."""
    from attestation import binding

    try:
        evidence = [Evidence.from_cbor_obj(e) for e in payload["evidence"]]
        gpu_nonce = binding.gpu_nonce(payload["key"]["spki"], payload["nonce"])
    except AttestationError as exc:
        add("tcb", False, f"the evidence does not decode: {exc}")
        return []
    shown: list[dict[str, Any]] = []
    record = payload["collateral"]
    for j in judge(evidence, record, at=report_at, accept=accept, gpu_nonce=gpu_nonce):
        add(
            f"tcb[{j.evidence}]",
            j.ok,
            f"from the report's collateral at {report_at:%Y-%m-%dT%H:%M:%SZ}: {j.line()}",
        )
        shown.append(_shown(j, "report", report_at))
    if fresh:
        for i, ev in enumerate(evidence):
            if ev.type in MOCK_TYPES:
                continue
            nonce = gpu_nonce if ev.type in GPU_TYPES else None
            j = judge_one(i, ev, fresh, at=now, accept=accept, expected_nonce=nonce)
            add(f"tcb[{i}]:fresh", j.ok, f"from fresher collateral at {now:%Y-%m-%dT%H:%M:%SZ}: {j.line()}")
            shown.append(_shown(j, "fresh", now))
    return shown


def _shown(j: Judgement, source: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "evidence": j.evidence,
        "type": j.type,
        "collateral": source,
        "at": f"{at:%Y-%m-%dT%H:%M:%SZ}",
        "ok": j.ok,
        "tcb_status": j.status,
        "advisories": list(j.advisories),
        "detail": j.detail,
    }


def fetch_fresh(payload: Mapping[str, Any], settings: CollateralSettings) -> dict[str, bytes]:
    """Collateral fetched now for the report's hardware evidence (`report verify --online`)."""
    out: dict[str, bytes] = {}
    for obj in payload["evidence"]:
        ev = Evidence.from_cbor_obj(obj)
        if ev.type not in MOCK_TYPES:
            out.update(fetch_one(ev, settings)[1])
    return out
