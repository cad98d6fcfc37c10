"""Verifier of NVIDIA GPU evidence (Hopper SPDM measurement reports).

Steps, one named check each: format, request, chain, signature, fwid, nonce, then per RIM
given rim:<label>:signature and rim:<label>:chain, and the comparisons rim_driver and
rim_vbios. Nothing raises for bad evidence; every failure is a failed check with a reason.

Inputs beside the evidence: the chain (Evidence.aux["chain"] or Trust.collateral["chain"]),
the expected nonce (`expected_report_data`, 32 bytes, or Trust.options["nonce"]), RIMs
(Trust.collateral["rim:<label>"]), roots (Trust.roots["nvidia-device"], ["nvidia-rim"],
else the bundled ones). Without an expected nonce the nonce check fails: an unbound report
proves nothing about freshness. Without RIMs the measurements are reported but not compared
(an advisory says so) unless Trust.options["require_rims"] is set, which makes that a failure.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from cryptography import x509

from attestation.errors import AttestationError
from attestation.evidence import ChecksBuilder, Evidence, Result, Trust
from attestation.nvidia import device, rim, spdm
from certs.chain import describe, fingerprint, load_certificates
from certs.errors import CertsError

DEVICE_ROOT_KEY, RIM_ROOT_KEY = "nvidia-device", "nvidia-rim"
RIM_PREFIX = "rim:"


@functools.cache
def bundled_root(name: str) -> tuple[x509.Certificate, ...]:
    data = resources.files("attestation.nvidia.roots").joinpath(name).read_bytes()
    return tuple(load_certificates(data, what=f"bundled root {name}"))


def device_roots() -> tuple[x509.Certificate, ...]:
    return bundled_root("verifier_device_root.pem")


def rim_roots() -> tuple[x509.Certificate, ...]:
    return bundled_root("verifier_RIM_root.pem")


def _roots(trust: Trust, key: str, default: Sequence[x509.Certificate]) -> Sequence[x509.Certificate]:
    given = trust.roots.get(key)
    return load_certificates(given, what=f"root {key}") if given is not None else default


@dataclass
class _Run:
    """State shared by the steps of one verification."""

    checks: ChecksBuilder = field(default_factory=ChecksBuilder)
    claims: dict[str, Any] = field(default_factory=dict)
    advisories: list[str] = field(default_factory=list)


def _expected_nonce(expected: bytes | None, trust: Trust) -> bytes | str | None:
    """The expected nonce, or a one-line error text when Trust.options["nonce"] is unusable."""
    if expected is not None:
        return expected
    option = trust.options.get("nonce")
    if option is None or isinstance(option, bytes):
        return option
    try:
        return bytes.fromhex(option) if isinstance(option, str) else f"options.nonce: {option!r}"
    except ValueError:
        return f"options.nonce is not hex: {option!r}"


def verify_gpu_report(
    evidence: Evidence,
    *,
    expected_nonce: bytes | None,
    trust: Trust,
    at: dt.datetime,
    type_name: str,
    device_root_list: Sequence[x509.Certificate],
    rim_root_list: Sequence[x509.Certificate],
    run: _Run | None = None,
    is_mock: bool = False,
) -> Result:
    """The verification pipeline, shared by the NVIDIA and mock-GPU verifiers."""
    run = run or _Run()
    checks, claims = run.checks, run.claims

    def result(report_data: bytes = b"") -> Result:
        return Result(
            type_name,
            checks.build(),
            claims,
            report_data=report_data,
            advisories=tuple(run.advisories),
            is_mock=is_mock,
        )

    if evidence.type != type_name:
        checks.fail("format", f"expected evidence type {type_name!r}, found {evidence.type!r}")
        return result()
    try:
        report = spdm.parse(evidence.data)
    except AttestationError as exc:
        checks.fail("format", str(exc))
        return result()
    resp = report.response
    checks.ok(
        "format",
        f"SPDM 1.1 GET_MEASUREMENTS, {len(resp.blocks)} blocks, {len(resp.opaque.fields)} opaque fields",
    )
    _claims_from_report(report, claims)
    _check_request(report, checks)

    leaf = _check_chain(evidence, trust, at, device_root_list, run)
    if leaf is None:
        checks.fail("signature", "not checked: no validated leaf certificate")
        checks.fail("fwid", "not checked: no validated leaf certificate")
    else:
        _check_signature(report, leaf, checks)
        _check_fwid(report, leaf, checks)
    _check_nonce(report, _expected_nonce(expected_nonce, trust), checks)
    _check_rims(report, trust, at, rim_root_list, run)
    run.advisories.append("certificate revocation not checked: no NVIDIA OCSP responses available offline")
    return result(report.request.nonce)


def _claims_from_report(report: spdm.Report, claims: dict[str, Any]) -> None:
    resp = report.response
    claims.update(
        {
            "spdm_version": "1.1",
            "nonce": report.request.nonce.hex(),
            "responder_nonce": resp.nonce.hex(),
            "slot_id": report.request.slot_id,
            "measurements": {str(b.index): b.value.hex() for b in resp.blocks},
            "opaque": resp.opaque.to_claims(),
        }
    )
    for name, getter in (
        ("driver_version", "driver_version"),
        ("vbios_version", "vbios_version"),
        ("fwid", "fwid"),
    ):
        try:
            value = getattr(resp.opaque, getter)
        except AttestationError:
            value = None
        claims[name] = value.hex() if isinstance(value, bytes) else value


def _check_request(report: spdm.Report, checks: ChecksBuilder) -> None:
    req, resp = report.request, report.response
    problems = []
    if req.param2 != spdm.PARAM2_ALL_MEASUREMENTS:
        problems.append(f"Param2 0x{req.param2:02x} does not request all measurements (0xff)")
    if resp.slot_id != req.slot_id:
        problems.append(f"response slot {resp.slot_id} differs from requested slot {req.slot_id}")
    if not resp.blocks:
        problems.append("the response holds no measurement block")
    if problems:
        checks.fail("request", "; ".join(problems))
    else:
        checks.ok("request", f"signed report of all measurements, slot {req.slot_id}")


def _check_chain(
    evidence: Evidence, trust: Trust, at: dt.datetime, roots: Sequence[x509.Certificate], run: _Run
) -> x509.Certificate | None:
    pem = evidence.aux.get("chain") or trust.collateral.get("chain")
    if not pem:
        run.checks.fail("chain", "no GPU certificate chain (evidence aux 'chain' or collateral 'chain')")
        return None
    try:
        certs = device.load_chain(pem)
        run.claims["chain"] = [describe(c) for c in certs]
        path = device.check_chain(certs, roots=roots, at=at)
    except (AttestationError, CertsError) as exc:
        run.checks.fail("chain", str(exc))
        return None
    run.claims["leaf_sha256"] = fingerprint(path[0])
    run.checks.ok("chain", f"{len(path)} certificates to {describe(path[-1])} at {at.isoformat()}")
    return path[0]


def _check_signature(report: spdm.Report, leaf: x509.Certificate, checks: ChecksBuilder) -> None:
    try:
        device.verify_report_signature(report, leaf)
    except AttestationError as exc:
        checks.fail("signature", str(exc))
        return
    checks.ok("signature", f"ECDSA P-384/SHA-384 over request and response by {describe(leaf)}")


def _check_fwid(report: spdm.Report, leaf: x509.Certificate, checks: ChecksBuilder) -> None:
    try:
        cert_fwid = device.leaf_fwid(leaf)
        report_fwid = report.response.opaque.fwid
    except AttestationError as exc:
        checks.fail("fwid", str(exc))
        return
    if report_fwid is None:
        checks.fail("fwid", "the report has no FWID opaque field (type 20)")
    elif hmac.compare_digest(cert_fwid, report_fwid):
        checks.ok("fwid", f"leaf certificate FWID equals the report's ({report_fwid.hex()[:16]}…)")
    else:
        checks.fail(
            "fwid",
            f"leaf certificate FWID {cert_fwid.hex()[:16]}… differs from "
            f"the report's {report_fwid.hex()[:16]}…",
        )


def _check_nonce(report: spdm.Report, expected: bytes | str | None, checks: ChecksBuilder) -> None:
    found = report.request.nonce
    if isinstance(expected, str):
        checks.fail("nonce", f"no usable expected nonce ({expected})")
    elif expected is None:
        checks.fail(
            "nonce", f"no expected nonce given; the report's is {found.hex()}: freshness is not established"
        )
    elif hmac.compare_digest(found, expected):
        checks.ok("nonce", "request nonce matches the expected nonce")
    else:
        checks.fail("nonce", f"expected {expected.hex()}, found {found.hex()}")


def _check_rims(
    report: spdm.Report, trust: Trust, at: dt.datetime, roots: Sequence[x509.Certificate], run: _Run
) -> None:
    given = {k[len(RIM_PREFIX) :]: v for k, v in sorted(trust.collateral.items()) if k.startswith(RIM_PREFIX)}
    required = bool(trust.options.get("require_rims"))
    if not given and not required:
        run.claims["rim_status"] = "not compared"
        run.advisories.append("measurements not compared with reference values: no driver or VBIOS RIM given")
        return
    verified = [
        r for label, data in given.items() if (r := _verify_rim(label, data, at, roots, run)) is not None
    ]
    run.claims["rims"] = [{"kind": r.kind, "version": r.version, "tag_id": r.tag_id} for r in verified]
    opaque = report.response.opaque
    try:
        versions = {"driver": opaque.driver_version, "vbios": opaque.vbios_version}
    except AttestationError as exc:
        run.checks.fail("rim_driver", str(exc))
        run.checks.fail("rim_vbios", str(exc))
        return
    chosen = {}
    for kind in ("driver", "vbios"):
        chosen[kind] = _compare_rim(kind, versions[kind], verified, report, run)
    both = [r for r in chosen.values() if r is not None]
    if len(both) == 2:
        overlap = sorted({m.index for m in both[0].active} & {m.index for m in both[1].active})
        run.checks.add(
            "rim_overlap",
            not overlap,
            "driver and VBIOS RIMs cover disjoint indices"
            if not overlap
            else f"indices {overlap} are active in both the driver and the VBIOS RIM",
        )
    run.claims["rim_status"] = "matched" if run.checks.all_passed else "failed"


def _verify_rim(
    label: str, data: bytes, at: dt.datetime, roots: Sequence[x509.Certificate], run: _Run
) -> rim.Rim | None:
    name = f"rim:{label}"
    try:
        parsed = rim.verify_signature(data, what=name)
    except AttestationError as exc:
        run.checks.fail(f"{name}:signature", str(exc))
        run.checks.fail(f"{name}:chain", "not checked: the signature did not verify")
        return None
    run.checks.ok(
        f"{name}:signature",
        f"XML-DSig ECDSA-SHA384 by {describe(parsed.certificates[0])}: {parsed.kind} RIM {parsed.version}",
    )
    try:
        rim.verify_signing_chain(parsed, roots=roots, at=at)
    except CertsError as exc:
        expired = [
            f"{describe(c)} (valid {c.not_valid_before_utc.date()} → {c.not_valid_after_utc.date()})"
            for c in parsed.certificates
            if not c.not_valid_before_utc <= at <= c.not_valid_after_utc
        ]
        extra = f"; outside validity at {at.isoformat()}: {', '.join(expired)}" if expired else ""
        run.checks.fail(f"{name}:chain", f"{exc}{extra}")
        return None
    run.checks.ok(
        f"{name}:chain", f"{len(parsed.certificates)} certificates to the NVIDIA RIM root at {at.isoformat()}"
    )
    return parsed


def _compare_rim(
    kind: str, version: str | None, verified: list[rim.Rim], report: spdm.Report, run: _Run
) -> rim.Rim | None:
    check = f"rim_{kind}"
    label = "driver" if kind == "driver" else "VBIOS"
    if version is None:
        run.checks.fail(check, f"the report carries no {label} version")
        return None
    candidates = [r for r in verified if r.kind == kind]
    matching = [r for r in candidates if r.version.lower() == version.lower()]
    if not matching:
        others = ", ".join(r.version for r in candidates) or "none"
        run.checks.fail(check, f"no RIM for {label} {version} (verified {label} RIMs given: {others})")
        return None
    if len(matching) > 1:
        run.checks.fail(check, f"{len(matching)} RIMs for {label} {version}; expected one")
        return None
    chosen = matching[0]
    mismatches = []
    for ref in chosen.active:
        block = report.response.measurement(ref.index + 1)  # RIM indices are 0-based, SPDM's 1-based
        if block is None:
            mismatches.append(f"{ref.index} (absent from the report)")
        elif block.value not in ref.alternatives:
            mismatches.append(f"{ref.index} ({block.value.hex()[:16]}…)")
    if mismatches:
        run.checks.fail(check, f"{label} RIM {version}: measurements differ at index {', '.join(mismatches)}")
    else:
        run.checks.ok(check, f"{len(chosen.active)} active measurements match the {label} RIM {version}")
    return chosen


class NvidiaVerifier:
    """Verifier for evidence type "nvidia" (registered in attestation/__init__.py)."""

    type_name = "nvidia"

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes | None,
        trust: Trust,
        at: dt.datetime,
    ) -> Result:
        run = _Run()
        try:
            dev_roots = _roots(trust, DEVICE_ROOT_KEY, device_roots())
            r_roots = _roots(trust, RIM_ROOT_KEY, rim_roots())
        except CertsError as exc:
            run.checks.fail("roots", str(exc))
            return Result(self.type_name, run.checks.build(), {})
        return verify_gpu_report(
            evidence,
            expected_nonce=expected_report_data,
            trust=trust,
            at=at,
            type_name=self.type_name,
            device_root_list=dev_roots,
            rim_root_list=r_roots,
            run=run,
        )
