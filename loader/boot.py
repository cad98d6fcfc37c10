"""The boot sequence (DESIGN "What it is"): key, evidence, certificate, policy, staging and
hashing, register extension, decision, workload, wipe, signed report, durable storage.

Every failure after the configuration is read still ends in a signed report with verdict
`abort` and the reasons, stored before the command exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

import loader
from attestation import AttestationError, Attester, Evidence, Trust, attester_for, binding, verifier_for
from attestation.errors import AttesterUnavailable, VerificationError
from attestation.nvidia import GPU_EVIDENCE_TYPES
from attestation.nvidia import gpu_attester as gpu_attester_for
from attestation.rtmr import event_value
from certs.selfissue import self_issue
from loader import multiparty
from loader.config import LoaderConfig
from loader.decide import Measured, decide
from loader.errors import InputError, PolicyError
from loader.keys import EphemeralKey
from loader.policy import ApprovedList, load_policy
from loader.report import input_event, sign_report, utc_text
from loader.runner import StagedPaths, WorkloadResult, run_process
from loader.spool import atomic_write, spool_report
from loader.stage import Measurement, make_private_dir, stage_input, wipe

log = logging.getLogger("trusted-loader")

EXIT_SUCCESS = 0
EXIT_ABORTED = 3
EXIT_ATTESTATION = 4
EXIT_WORKLOAD = 5


@dataclass
class BootState:
    """What the boot has established so far; everything the report needs."""

    cfg: LoaderConfig
    key: EphemeralKey
    nonce: bytes
    run_id: str
    times: dict[str, str] = field(default_factory=dict)
    attester: Attester | None = None
    evidence: list[Evidence] = field(default_factory=list)
    chain: list[bytes] = field(default_factory=list)
    policy: ApprovedList | None = None
    measurements: list[Measurement] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    attestation_failed: bool = False
    workload: WorkloadResult | None = None
    output: dict[str, Any] | None = None
    wiped: dict[str, int] | None = None
    hash_seconds: float = 0.0
    output_error: str | None = None
    party: multiparty.PartyState = field(default_factory=multiparty.PartyState)

    def stamp(self, name: str) -> None:
        self.times[name] = utc_text(dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class BootOutcome:
    report: bytes
    spool_path: Path
    verdict: str
    reasons: tuple[str, ...]
    workload: WorkloadResult | None
    exit_code: int
    output_dir: Path | None


def boot(
    cfg: LoaderConfig,
    *,
    report_out: Path | None = None,
    attester: Attester | None = None,
    gpu_attester: Any = None,
) -> BootOutcome:
    """Run the boot sequence; `attester` and `gpu_attester` replace the configured ones (tests)."""
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
    state = BootState(
        cfg=cfg, key=EphemeralKey(), nonce=secrets.token_bytes(binding.NONCE_LEN), run_id=run_id
    )
    state.stamp("started")
    try:
        _attest(state, attester, gpu_attester)
        _certify(state)
        multiparty.publish_certificate(state)
        _load_policy(state)
        _stage_and_run(state)
        report = _sign(state)
    finally:
        state.key.discard()
    return _store(state, report, report_out)


def _stage_and_run(state: BootState) -> None:
    cfg = state.cfg
    try:
        staging = make_private_dir(cfg.staging_dir / f"{cfg.job_id or 'job'}-{state.run_id}")
    except InputError as exc:
        state.reasons.append(f"staging: {exc}")
        log.error("%s", exc)
        state.stamp("measured")
        _decide(state)
        return
    try:
        _measure(state, staging)
        _extend(state)
        _decide(state)
        if not state.reasons and cfg.grants is not None:
            multiparty.unlock(state, staging)
        if not state.reasons:
            _run(state, staging)
    finally:
        state.wiped = multiparty.wipe_record(state, wipe(staging))


def _step(name: str, start: float) -> None:
    log.info("%s done in %.3f s", name, time.monotonic() - start)


def _attest(state: BootState, attester: Attester | None, gpu_attester: Any) -> None:
    """GPU evidence first (nonce = gpu_nonce), then the CPU evidence binding it (DESIGN "Interfaces")."""
    start = time.monotonic()
    gpus = _collect_gpus(state, gpu_attester)
    try:
        state.attester = attester or attester_for(state.cfg.tee, root=state.cfg.tee_root)
        report_data = binding.report_data(state.key.spki, state.nonce, gpus)
        state.evidence.append(state.attester.collect(report_data))
        state.evidence.extend(gpus)
    except AttestationError as exc:
        state.attestation_failed = True
        state.reasons.append(f"attestation: {exc}")
        log.error("attestation failed: %s", exc)
    _step("attestation", start)


def _collect_gpus(state: BootState, gpu_attester: Any) -> list[Evidence]:
    """Evidence of every GPU, verified here before the GPUs are released for work.

    Evidence that fails verification is left out of the report (its reason is kept), so the
    report's evidence stays verifiable and the job aborts.
    """
    mode = state.cfg.gpu_mode
    if gpu_attester is None and mode == "none":
        return []
    nonce = binding.gpu_nonce(state.key.spki, state.nonce)
    try:
        gpu_attester = gpu_attester or gpu_attester_for(mode)
        evidence = gpu_attester.collect_all(nonce)
        if not evidence:
            raise AttesterUnavailable(f"gpu mode {mode!r}: no GPU in confidential-computing mode was found")
        trust = Trust(allow_mock=mode == "mock")
        for i, ev in enumerate(evidence):
            res = verifier_for(ev.type).verify(
                ev, expected_report_data=nonce, trust=trust, at=dt.datetime.now(dt.UTC)
            )
            if not res.ok:
                raise VerificationError(f"GPU {i} evidence does not verify: {res.reason()}")
        gpu_attester.set_ready()
    except AttestationError as exc:
        state.attestation_failed = True
        state.reasons.append(f"attestation: gpu: {exc}")
        log.error("GPU attestation failed: %s", exc)
        return []
    log.info("%d GPU(s) attested", len(evidence))
    return list(evidence)


def _certify(state: BootState) -> None:
    bundle = {"nonce": state.nonce, "evidence": [e.to_cbor_obj() for e in state.evidence], "claims": {}}
    cert = self_issue(
        state.key.private,
        common_name=f"trusted-loader {state.cfg.job_id or state.run_id}",
        bundle=bundle,
        now=dt.datetime.now(dt.UTC),
    )
    state.chain = [cert.public_bytes(serialization.Encoding.DER)]


def _load_policy(state: BootState) -> None:
    try:
        state.policy = load_policy(state.cfg.policy_path)
    except PolicyError as exc:
        state.reasons.append(f"policy: {exc}")
        log.error("%s", exc)
    multiparty.check_policy(state)


def _measure(state: BootState, staging: Path) -> None:
    start = time.monotonic()
    encrypted = multiparty.encrypted_names(state)
    for spec in state.cfg.inputs:
        sealed = spec.role == "dataset" and spec.name in encrypted
        try:
            m = stage_input(spec, staging / ("sealed" if sealed else "inputs"))
        except InputError as exc:
            state.reasons.append(f"{spec.label}: {exc}")
            log.error("%s", exc)
            continue
        if sealed:
            state.party.ciphertexts[spec.name] = m
        else:
            state.measurements.append(m)
        log.info(
            "measured %s: %s (%d bytes, %d files)", spec.label, m.digest.digest, m.digest.size, m.digest.files
        )
    state.hash_seconds = time.monotonic() - start
    state.stamp("measured")
    _step("measurement", start)


def _extend(state: BootState) -> None:
    """Extend the runtime register with the policy digest, then each input, in order."""
    entries = []
    if state.policy is not None:
        entries.append(f"policy={state.policy.digest}")
    entries += [input_event(m.spec.role, m.spec.name, m.digest.digest) for m in state.measurements]
    entries += [multiparty.encrypted_event(n, m.digest.digest) for n, m in state.party.ciphertexts.items()]
    for event in entries:
        value = event_value(event)
        if state.attester is not None:
            try:
                state.attester.extend(value, event)
            except AttestationError as exc:
                state.attestation_failed = True
                state.reasons.append(f"attestation: extending the runtime register failed: {exc}")
                return
        state.events.append({"register": "rtmr3", "event": event, "value": value})


def _decide(state: BootState) -> None:
    if state.policy is not None:
        measured = [Measured(m.spec.role, m.spec.name, m.digest.digest) for m in state.measurements]
        gpus = sum(1 for e in state.evidence if e.type in GPU_EVIDENCE_TYPES)
        state.reasons += decide(
            state.policy, measured, state.cfg.tee, gpus=gpus, pending=multiparty.pending(state)
        )
    state.stamp("decided")
    if state.reasons:
        log.warning("abort: %s", "; ".join(state.reasons))
    else:
        log.info("all inputs match the approved list: running the workload")


def _run(state: BootState, staging: Path) -> None:
    staged = {m.spec.name: m.staged for m in state.measurements if m.spec.role == "dataset"}
    engine = next(m.staged for m in state.measurements if m.spec.role == "engine")
    config = next((m.staged for m in state.measurements if m.spec.role == "config"), None)
    paths = StagedPaths(
        engine=engine,
        config=config,
        datasets=staged,
        datasets_dir=staging / "inputs" / "dataset",
        output=staging / "output",
        logs=staging / "logs",
    )
    start = time.monotonic()
    state.workload = run_process(
        state.cfg.run.command, paths, timeout=state.cfg.run.timeout, extra_env=dict(state.cfg.run.env)
    )
    _step("workload", start)
    state.output = _collect_output(state, paths)


def _collect_output(state: BootState, paths: StagedPaths) -> dict[str, Any] | None:
    """Move the engine's output and logs out of staging; record the output's digest."""
    from loader.digest import digest_path

    target = state.cfg.output_dir / state.run_id
    target.mkdir(parents=True, mode=0o700)
    if state.party.recipient is not None:
        return multiparty.seal_output(state, paths, target)
    shutil.move(str(paths.logs), target / "logs")
    if not any(paths.output.iterdir()):
        return None
    try:
        measured = digest_path(paths.output)
    except InputError as exc:
        state.output_error = f"output: {exc}"
        return None
    shutil.move(str(paths.output), target / "output")
    return {"digest": measured.digest, "size": measured.size, "files": measured.files}


def _payload(state: BootState) -> dict[str, Any]:
    cfg, policy = state.cfg, state.policy
    total = sum(m.digest.size for m in state.measurements)
    ms = int(state.hash_seconds * 1000)
    wl = state.workload
    verdict = "abort" if wl is None else "run"
    return {
        "format": "trusted-loader/report/v1",
        "loader": {"name": "trusted-loader", "version": loader.__version__},
        "job": {"id": cfg.job_id, "order": policy.order if policy else ""},
        "tee": cfg.tee,
        "key": {"alg": "ES384", "spki": state.key.spki},
        "nonce": state.nonce,
        "evidence": [e.to_cbor_obj() for e in state.evidence],
        "policy": {
            "digest": policy.digest if policy else "",
            "document": policy.raw if policy else b"",
            **multiparty.policy_record(state),
        },
        "inputs": multiparty.input_records(state, lambda m: _input_entry(m, policy)),
        "events": state.events,
        "decision": {"verdict": verdict, "reasons": list(state.reasons)},
        "workload": None
        if wl is None
        else {
            "exit_code": wl.exit_code,
            "timed_out": wl.timed_out,
            "ms": int(wl.seconds * 1000),
            "error": wl.error or state.output_error,
            "output": state.output,
        },
        "hashing": {
            "bytes": total,
            "ms": ms,
            "rate": int(total / state.hash_seconds) if state.hash_seconds else 0,
        },
        "wipe": state.wiped,
        "timestamps": {**state.times, "finished": utc_text(dt.datetime.now(dt.UTC))},
    }


def _input_entry(m: Measurement, policy: ApprovedList | None) -> dict[str, Any]:
    approved = policy.find(m.spec.role, m.spec.name) if policy else None
    return {
        "role": m.spec.role,
        "name": m.spec.name,
        "kind": m.digest.kind,
        "digest": m.digest.digest,
        "size": m.digest.size,
        "files": m.digest.files,
        "expected": approved.digest if approved else None,
        "ms": int(m.seconds * 1000),
    }


def _sign(state: BootState) -> bytes:
    return sign_report(_payload(state), x5chain=state.chain, sign=state.key.sign_raw)


def _store(state: BootState, report: bytes, report_out: Path | None) -> BootOutcome:
    path = spool_report(state.cfg.spool_dir, report)
    log.info("report stored at %s", path)
    if report_out is not None:
        atomic_write(report_out, report)
    wl = state.workload
    if wl is None:
        code = EXIT_ATTESTATION if state.attestation_failed else EXIT_ABORTED
        verdict = "abort"
    else:
        code = EXIT_SUCCESS if wl.succeeded and state.output_error is None else EXIT_WORKLOAD
        verdict = "run"
    out = state.cfg.output_dir / state.run_id if wl is not None else None
    return BootOutcome(report, path, verdict, tuple(state.reasons), wl, code, out)
