"""Verification of an integrity report by anyone holding it, with vendor roots (and our CA).

Each step is a named check; the report is accepted only when every check passes. Nothing in
the report is taken on trust: the binding is recomputed, the evidence re-verified, the
decision re-derived from the report's own inputs and approved list.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import AttestationError, Evidence, Result, Trust, binding, verifier_for
from attestation.nvidia import GPU_EVIDENCE_TYPES
from attestation.reference import Appraisal, appraise
from attestation.rtmr import event_value
from certs.chain import verify_chain
from certs.errors import CertsError
from certs.extensions import decode_evidence_extension
from loader.errors import PolicyError, ReportError
from loader.report import boundary, cose
from loader.report.boundary import WORKLOAD_START
from loader.report.collateral import DEFAULT_ACCEPT, report_checks
from loader.report.decide import Measured, decide
from loader.report.document import Report, input_event, parse_report, parse_utc
from loader.report.policy import Execution, parse_policy
from loader.report.signing import check_signatures

GPU_TYPES = GPU_EVIDENCE_TYPES
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


# What a reader can rely on, in the order a report's rendering opens with it.
TRUST_VERIFIED = "verified"
TRUST_REJECTED = "NOT verified"
TRUST_MOCK = "MOCK"
TRUST_NOT_APPRAISED = "not appraised"


@dataclass
class Verification:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    evidence: list[Result] = field(default_factory=list)
    report: Report | None = None
    tcb: list[dict[str, Any]] = field(default_factory=list)
    at: dt.datetime | None = None
    """The time given with --at (every validity check uses it), or None."""
    checked_at: dt.datetime | None = None
    """The time the evidence and collateral were judged at (--at, or now)."""
    appraisal: Appraisal = field(default_factory=Appraisal)
    """What the verifier pins (attestation.reference): reference values, or --any-image."""
    allow_no_isolation: bool = False

    def add(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append((name, passed, detail))
        return passed

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)

    def reason(self) -> str:
        bad = [(n, d) for n, p, d in self.checks if not p]
        return f"{bad[0][0]}: {bad[0][1]}" if bad else "verified"

    @property
    def is_mock(self) -> bool:
        return any(r.is_mock for r in self.evidence)

    def trust(self) -> str:
        """verified / NOT verified / MOCK / not appraised: what the report is worth, first."""
        if not self.ok:
            return TRUST_REJECTED
        if self.is_mock:
            return TRUST_MOCK
        return TRUST_NOT_APPRAISED if self.appraisal.reference is None else TRUST_VERIFIED

    def to_json(self) -> dict[str, Any]:
        return {
            "trust": self.trust(),
            "mock": self.is_mock,
            "ok": self.ok,
            "digest": self.report.digest if self.report else None,
            "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in self.checks],
            "evidence": [r.to_json() for r in self.evidence],
            "tcb": self.tcb,
            "reason": None if self.ok else self.reason(),
            "allow_no_isolation": self.allow_no_isolation,
            "appraisal": self.appraisal.to_json(),
            "at": self.at.isoformat() if self.at else None,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
        }


def verify_report(
    raw: bytes,
    *,
    ca: Sequence[x509.Certificate] = (),
    at: dt.datetime | None = None,
    allow_mock: bool = False,
    trust: Trust | None = None,
    allow_no_isolation: bool = False,
    appraisal: Appraisal | None = None,
) -> Verification:
    """Verify a report in full. `appraisal` pins the platform; None pins nothing, so no
    evidence passes (fail closed) unless it says any_image. With `at`, every validity check
    (evidence, certificate, policy signatures) uses it; otherwise evidence is judged now and the
    certificate and signatures at the report's own times."""
    result = Verification(allow_no_isolation=allow_no_isolation)
    try:
        report = parse_report(raw)
    except ReportError as exc:
        result.add("format", False, str(exc))
        return result
    result.report = report
    result.add("format", True, "COSE_Sign1, ES384, deterministic CBOR payload")
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)  # as the command line reads a time without offset
    when = dt.datetime.now(dt.UTC) if at is None else at
    result.at, result.checked_at, result.appraisal = at, when, appraisal or Appraisal()
    result.add("time", True, _time_detail(report, when, at))
    trust = trust or Trust(allow_mock=allow_mock)
    if not check_signer(result, report):
        return result
    _chain(result, report, ca, at)
    _evidence(result, report, trust, when, result.appraisal)
    report_at = at or parse_utc(report.payload["timestamps"]["decided"])
    result.tcb = report_checks(
        result.add,
        report.payload,
        report_at=report_at if report_at.tzinfo else report_at.replace(tzinfo=dt.UTC),
        now=when,
        fresh=trust.collateral,
        accept=tuple(trust.options.get("accept_tcb") or DEFAULT_ACCEPT),
    )
    signature_reasons = _signatures(result, report, at)
    _decision(result, report, signature_reasons)
    _events(result, report)
    _boundary(result, report)
    _containment(result, report)
    _timestamps(result, report)
    return result


def _boundary(result: Verification, report: Report) -> None:
    """The key's evidence predates every workload start (loader.report.boundary)."""
    if not result.evidence or result.evidence[0].type in GPU_TYPES:
        result.add("rtmr3", False, "no verified CPU evidence to read RTMR3 from")
        return
    raw = result.evidence[0].claims.get("rtmr3")
    try:
        value = None if raw is None else bytes.fromhex(str(raw))
    except ValueError:
        value = b""
    passed, detail = boundary.appraise(value, report.payload["rtmr3"], report.payload["events"])
    result.add("rtmr3", passed, detail)


def _containment(result: Verification, report: Report) -> None:
    record = report.payload["containment"]
    ran = report.payload["workload"] is not None
    if record is None:
        result.add(
            "containment",
            not ran,
            "no engine ran" if not ran else "the engine ran with no containment record",
        )
    elif record["isolation"] != "none":
        who = "its own uid" if not record["user_namespace"] else "a user namespace"
        spaces = ", ".join(record["namespaces"])
        how = f"{who}, namespaces {spaces}, network {record['network']}"
        result.add("containment", True, f"{record['isolation']} ({record['runner']}): {how}")
    elif result.allow_no_isolation:
        result.add("containment", True, "isolation 'none' accepted (--allow-no-isolation)")
    else:
        result.add(
            "containment",
            False,
            "isolation 'none': the engine ran uncontained and could have spoken for the loader; "
            "pass --allow-no-isolation to accept it",
        )


def _time_detail(report: Report, when: dt.datetime, at: dt.datetime | None) -> str:
    if at is not None:
        return f"every validity check at {at.isoformat()} (--at)"
    started = report.payload["timestamps"]["started"]
    return (
        f"evidence at {when.isoformat()} (now); certificate at the report's finish "
        f"{report.signed_at.isoformat()}; approved-list signatures at its start {started}"
    )


def check_signer(result: Verification, report: Report) -> bool:
    if not report.chain:
        return result.add("signer", False, "x5chain is empty")
    leaf = report.chain[0]
    try:
        public = leaf.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        return result.add("signer", False, f"the certificate's public key does not parse ({exc})")
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not hmac.compare_digest(spki, report.payload["key"]["spki"]):
        return result.add("signer", False, "the certificate's key is not the key named in the payload")
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return result.add("signer", False, "the certificate's key is not an EC key")
    ok = cose.verify_sign1(report.envelope, public)
    return result.add(
        "signature",
        ok,
        "the report is signed by the certificate's key" if ok else "ES384 signature does not verify",
    )


def _signer_usage(leaf: x509.Certificate) -> str | None:
    """Why `leaf` may not sign reports (a CA certificate, no digitalSignature), or None."""
    try:
        constraints = _extension(leaf, x509.BasicConstraints)
        usage = _extension(leaf, x509.KeyUsage)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        return f"the signer's certificate has malformed extensions ({exc})"
    if constraints is not None and constraints.ca:
        return "the signer's certificate is a CA certificate, not an end-entity one"
    if usage is not None and not usage.digital_signature:
        return "the signer's certificate does not allow digitalSignature"
    return None


def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _chain_certificate(
    result: Verification, report: Report, ca: Sequence[x509.Certificate], at: dt.datetime | None
) -> None:
    leaf, rest = report.chain[0], report.chain[1:]
    signed_at = at or report.signed_at
    misuse = _signer_usage(leaf)
    if misuse:
        result.add("certificate", False, misuse)
    elif ca:
        try:
            path = verify_chain(leaf, intermediates=rest, roots=ca, at=signed_at)
        except CertsError as exc:
            result.add("certificate", False, f"does not chain to the given CA: {exc}")
            return
        # x5chain is the path leaf first (the anchor may be left out); nothing else may ride along.
        on_path = len(report.chain) <= len(path) and all(
            a == b for a, b in zip(report.chain, path, strict=False)
        )
        result.add(
            "certificate",
            on_path,
            f"issued by the given CA, valid at {signed_at.isoformat()}"
            if on_path
            else "x5chain holds certificates that are not on the validated path",
        )
    elif leaf.issuer == leaf.subject:
        if rest:
            result.add(
                "certificate", False, f"self-issued, but x5chain holds {len(rest)} more certificate(s)"
            )
            return
        try:
            verify_chain(leaf, roots=[leaf], at=signed_at)
            result.add("certificate", True, "self-issued (offline mode): trust rests on the evidence")
        except CertsError as exc:
            result.add("certificate", False, f"self-issued certificate invalid: {exc}")
    else:
        result.add("certificate", False, "issued by a CA: pass --ca with that CA's certificate")


def _chain(
    result: Verification, report: Report, ca: Sequence[x509.Certificate], at: dt.datetime | None
) -> None:
    leaf = report.chain[0]
    _chain_certificate(result, report, ca, at)
    try:
        bundle = decode_evidence_extension(leaf)
    except CertsError as exc:
        result.add("certificate_evidence", False, str(exc))
        return
    payload = report.payload
    same = (
        bundle is not None
        and bundle.get("nonce") == payload["nonce"]
        and bundle.get("evidence") == payload["evidence"]
    )
    result.add(
        "certificate_evidence",
        same,
        "the certificate carries the report's nonce and evidence"
        if same
        else "the certificate's evidence extension differs from the report's evidence",
    )


def _evidence(
    result: Verification, report: Report, trust: Trust, when: dt.datetime, appraisal: Appraisal
) -> None:
    payload = report.payload
    try:
        items = [Evidence.from_cbor_obj(e) for e in payload["evidence"]]
    except AttestationError as exc:
        result.add("evidence", False, str(exc))
        return
    cpu = [e for e in items if e.type not in GPU_TYPES]
    gpus = [e for e in items if e.type in GPU_TYPES]
    if len(cpu) != 1 or items[0] is not cpu[0]:
        result.add("evidence", False, f"expected one CPU evidence first, found {len(cpu)}")
        return
    if cpu[0].type != payload["tee"]:
        result.add(
            "evidence", False, f"evidence is {cpu[0].type!r} but the report says tee {payload['tee']!r}"
        )
        return
    spki, nonce = payload["key"]["spki"], payload["nonce"]
    try:
        expected = binding.report_data(spki, nonce, gpus)
        gpu_expected = binding.gpu_nonce(spki, nonce)
    except AttestationError as exc:
        result.add("binding", False, str(exc))
        return
    for i, ev in enumerate(items):
        want = gpu_expected if ev.type in GPU_TYPES else expected
        try:
            res = verifier_for(ev.type).verify(ev, expected_report_data=want, trust=trust, at=when)
        except AttestationError as exc:
            result.add(f"evidence[{i}]", False, f"{ev.type}: {exc}")
            continue
        result.evidence.append(res)
        result.add(f"evidence[{i}]", res.ok, f"{ev.type}: verified" if res.ok else res.reason())
        if res.ok:
            for check in appraise(res, appraisal):
                result.add(f"evidence[{i}].{check.name}", check.passed, f"{ev.type}: {check.detail}")
        _debug_flag(result, report, res, i)


def _debug_flag(result: Verification, report: Report, res: Result, index: int) -> None:
    if res.claims.get("debug") is not True or report.payload["decision"]["verdict"] != "run":
        return
    try:
        flags = parse_policy(report.payload["policy"]["document"], "policy").flags
    except PolicyError:
        return
    if not flags.get("allow_debug"):
        result.add(
            f"evidence[{index}].debug_consent",
            False,
            "a debug TEE ran the workload; the approved list forbids it",
        )


def _signatures(result: Verification, report: Report, at: dt.datetime | None) -> list[str]:
    """Re-judge the embedded signature envelopes with the embedded signer keys."""
    from loader.errors import LoaderError
    from loader.report.partykeys import public_from_der

    policy = report.payload["policy"]
    if not policy["signers"]:
        result.add(
            "signatures",
            True,
            "no trusted signers configured: the approved list was not required to be signed",
        )
        return []
    try:
        keys = {
            s["name"]: public_from_der(s["key"], f"policy.signers {s['name']!r}") for s in policy["signers"]
        }
    except LoaderError as exc:
        result.add("signatures", False, str(exc))
        return []
    required = [s["name"] for s in policy["signers"] if s["required"]]
    envelopes = [(s["file"], s["cose"]) for s in policy["signatures"]]
    when = at or parse_utc(report.payload["timestamps"]["started"])
    check = check_signatures(policy["document"], envelopes, keys, required, when)
    ran = report.payload["decision"]["verdict"] == "run"
    if check.reasons and ran:
        result.add("signatures", False, f"the report says run, but: {check.reasons[0]}")
    else:
        signed = ", ".join(check.verified) or "nobody"
        result.add("signatures", True, f"approved list signed by {signed}; required: {', '.join(required)}")
    return list(check.reasons)


def _decision(result: Verification, report: Report, signature_reasons: list[str]) -> None:
    payload = report.payload
    verdict, reasons = payload["decision"]["verdict"], payload["decision"]["reasons"]
    ran = payload["workload"] is not None
    if (verdict == "run") != ran or (verdict == "run") == bool(reasons):
        result.add(
            "decision", False, f"verdict {verdict!r} is inconsistent with the reasons and the workload"
        )
        return
    doc = payload["policy"]["document"]
    if not doc:
        result.add("decision", verdict == "abort", "no approved list was loaded; the job was aborted")
        return
    try:
        policy = parse_policy(doc, "report policy.document")
    except PolicyError as exc:
        result.add("decision", verdict == "abort", f"the approved list did not parse: {exc}")
        return
    if policy.digest != payload["policy"]["digest"]:
        result.add("decision", False, "policy.digest is not the digest of policy.document")
        return
    measured = [
        Measured(i["role"], i["name"], i["digest"], i["kind"]) for i in payload["inputs"] if i["digest"]
    ]
    pending = [i["name"] for i in payload["inputs"] if i["encrypted"] is not None and not i["digest"]]
    if verdict == "run" and pending:
        result.add("decision", False, f"the report says run, but dataset {pending[0]!r} was never decrypted")
        return
    gpus = sum(1 for e in payload["evidence"] if isinstance(e, dict) and e.get("type") in GPU_TYPES)
    execution = execution_from_record(payload["run"])
    derived = (
        decide(policy, measured, payload["tee"], execution=execution, gpus=gpus, pending=pending)
        + signature_reasons
    )
    missing = [r for r in derived if r not in reasons]
    if verdict == "run" and derived:
        result.add("decision", False, f"the report says run, but: {derived[0]}")
    elif missing:
        result.add("decision", False, f"a reason is missing from the report: {missing[0]}")
    else:
        result.add("decision", True, f"verdict {verdict!r} follows from the inputs and the approved list")


def execution_from_record(record: dict[str, Any]) -> Execution:
    """The configured execution a report records (its types checked by loader/report/document.py)."""
    return Execution(
        runtime=record["runtime"],
        command=tuple(record["command"]),
        env=tuple(sorted(record["env"].items())),
        network=record["network"],
        timeout_ms=record["timeout_ms"],
        platform=record["platform"],
        recipient=record["recipient"],
        isolation=record["isolation"],
    )


def _timestamps(result: Verification, report: Report) -> None:
    stamps = report.payload["timestamps"]
    names = ("started", "measured", "decided", "finished")
    times = [parse_utc(stamps[name]) for name in names]
    bad = [f"{names[i]} after {names[i + 1]}" for i in range(len(names) - 1) if times[i] > times[i + 1]]
    result.add(
        "timestamps",
        not bad,
        f"{', '.join(bad)}: the report's times are out of order" if bad else "in order",
    )


def _events(result: Verification, report: Report) -> None:
    payload = report.payload
    expected = []
    if payload["policy"]["digest"]:
        expected.append(f"policy={payload['policy']['digest']}")
    inputs = payload["inputs"]
    expected += [input_event(i["role"], i["name"], i["digest"]) for i in inputs if i["encrypted"] is None]
    expected += [
        f"dataset:{i['name']}:encrypted={i['encrypted']['digest']}" for i in inputs if i["encrypted"]
    ]
    expected += [
        input_event(i["role"], i["name"], i["digest"]) for i in inputs if i["encrypted"] and i["digest"]
    ]
    if payload["workload"] is not None:
        expected.append(WORKLOAD_START)
    events = payload["events"]
    names = [e["event"] for e in events]
    values_ok = all(e["value"] == event_value(e["event"]) for e in events)
    if payload["workload"] is not None and names != expected:
        result.add("events", False, "the runtime-register event log does not match the measured inputs")
    elif not values_ok:
        result.add("events", False, "an event's extended value is not the hash of its event text")
    else:
        result.add("events", True, f"{len(events)} register extensions match the inputs")
