"""The boot sequence (DESIGN "What it is"): key, evidence, certificate, policy, staging and
hashing, register extension, decision, workload, wipe, signed report, durable storage.

Every failure after the configuration is read still ends in a signed report with verdict
`abort` and the reasons, stored before the command exits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import shutil
import time
from collections.abc import Iterator
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
from certs.errors import CertsError
from certs.selfissue import self_issue
from loader.boot import containment, enroll, multiparty, sandbox
from loader.boot.config import LoaderConfig
from loader.boot.keys import EphemeralKey
from loader.boot.notify import Notifier
from loader.boot.ocirun import oci_mismatch, run_staged_image
from loader.boot.runner import StagedPaths, WorkloadResult, run_process
from loader.boot.stage import Measurement, make_private_dir, stage_input, wipe
from loader.errors import InputError, PolicyError
from loader.measure.progress import hashing_meter, rate_text
from loader.publish.spool import atomic_write, spool_report
from loader.report import boundary
from loader.report.decide import decide
from loader.report.document import FORMAT, input_event, sign_report, utc_text
from loader.report.partykeys import key_id_text
from loader.report.policy import ApprovedList, Execution, load_policy

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
    notifier: Notifier = field(default_factory=Notifier.disabled)
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
    wiped: dict[str, int | str] | None = None
    hash_seconds: float = 0.0
    gpu_attester: Any = None
    gpu_failure: str | None = None
    output_error: str | None = None
    collateral: dict[str, Any] | None = None
    party: multiparty.PartyState = field(default_factory=multiparty.PartyState)
    rtmr3_initial: bytes | None = None
    containment: dict[str, Any] | None = None

    @property
    def execution(self) -> Execution:
        """How the configuration runs the engine and where the output goes (the consent's terms)."""
        recipient = self.party.recipient
        return self.cfg.run.execution(key_id_text(recipient) if recipient is not None else None)

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
    notifier: Notifier | None = None,
) -> BootOutcome:
    """Run the job once; `attester` and `gpu_attester` replace the configured ones (tests).

    READY=1 goes to the service manager (`notifier`) as soon as the key exists.
    """
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
    sandbox.make_non_dumpable()  # before the key exists: no /proc/<pid>/mem, no core dump
    state = BootState(
        cfg=cfg,
        key=EphemeralKey(),
        nonce=secrets.token_bytes(binding.NONCE_LEN),
        run_id=run_id,
        notifier=notifier or Notifier.disabled(),
    )
    state.stamp("started")
    state.notifier.ready(f"job {cfg.job_id or run_id}: key generated")
    log.info("job %s started (run %s, tee %s)", cfg.job_id or "-", run_id, cfg.tee)
    try:
        with _step(state, "attestation", "attesting"):
            _attest(state, attester, gpu_attester)
            _read_initial(state)
        with _step(state, "certificate", "certifying the key"):
            _certify(state)
            multiparty.publish_certificate(state)
        with _step(state, "policy", "loading the approved list"):
            _load_policy(state)
        _stage_and_run(state)
        with _step(state, "sign", "signing report"):
            report = _sign(state)
    finally:
        state.key.discard()
    with _step(state, "store", "storing report"):
        outcome = _store(state, report, report_out)
    state.notifier.stopping(f"done verdict={outcome.verdict} exit={outcome.exit_code}")
    return outcome


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
        with _step(state, "measurement", f"measuring 0/{len(cfg.inputs)} inputs"):
            _measure(state, staging)
        with _step(state, "extend", "extending the runtime register"):
            _extend(state)
        with _step(state, "collateral", "fetching and judging collateral"):
            _collateral(state)
        with _step(state, "decision", "deciding"):
            _decide(state)
        if not state.reasons and cfg.grants is not None:
            with _step(state, "unlock", "checking grants and decrypting datasets"):
                multiparty.unlock(state, staging)
        if not state.reasons:
            with _step(state, "workload", "running workload"):
                _run(state, staging)
    finally:
        with _step(state, "wipe", "wiping staged inputs"):
            state.wiped = multiparty.wipe_record(state, wipe(staging, cfg.wipe))


@contextlib.contextmanager
def _step(state: BootState, name: str, status: str) -> Iterator[None]:
    """One boot step: STATUS= to the service manager, then one log record with its duration."""
    state.notifier.status(status)
    start = time.monotonic()
    try:
        yield
    finally:
        seconds = time.monotonic() - start
        log.info("%s done in %.3f s", name, seconds, extra={"step": name, "seconds": round(seconds, 6)})


def _attest(state: BootState, attester: Attester | None, gpu_attester: Any) -> None:
    """Evidence bound to the key: GPUs first (nonce = gpu_nonce), then the CPU binding them.

    With a CA the nonce is the CA's and evidence is collected again for each attempt.
    """
    try:
        state.attester = cpu = attester or attester_for(state.cfg.tee, root=state.cfg.tee_root)
        if state.cfg.gpu_mode != "none" or gpu_attester is not None:
            state.gpu_attester = gpu_attester or gpu_attester_for(state.cfg.gpu_mode)
        if state.cfg.ca_url:
            _enroll(state, cpu)
        else:
            _collect(state, cpu, state.nonce)
    except AttestationError as exc:
        state.attestation_failed = True
        state.reasons.append(f"attestation: {exc}")
        log.error("attestation failed: %s", exc)
    except enroll.EnrollmentError as exc:
        state.attestation_failed = True
        state.reasons.append(f"certificate: {exc}")
        log.error("enrollment failed: %s", exc)
    if state.gpu_failure:
        state.attestation_failed = True
        state.reasons.append(state.gpu_failure)


def _collect(state: BootState, attester: Attester, nonce: bytes) -> list[Evidence]:
    """Evidence bound to the ephemeral key and `nonce` (the CA's, or a local one offline)."""
    state.nonce = nonce
    gpus = _collect_gpus(state)
    cpu = attester.collect(binding.report_data(state.key.spki, nonce, gpus))
    state.evidence = [cpu, *gpus]
    return state.evidence


def _collect_gpus(state: BootState) -> list[Evidence]:
    """Evidence of every GPU, verified here before the GPUs are released for work.

    Evidence that fails verification is left out (the failure becomes an abort reason), so the
    CPU evidence still binds exactly what the report carries and the abort report verifies.
    """
    state.gpu_failure = None
    if state.gpu_attester is None:
        return []
    nonce = binding.gpu_nonce(state.key.spki, state.nonce)
    mode = state.cfg.gpu_mode
    try:
        evidence = state.gpu_attester.collect_all(nonce)
        if not evidence:
            raise AttesterUnavailable(f"gpu mode {mode!r}: no GPU in confidential-computing mode was found")
        trust = Trust(allow_mock=mode == "mock")
        for i, ev in enumerate(evidence):
            res = verifier_for(ev.type).verify(
                ev, expected_report_data=nonce, trust=trust, at=dt.datetime.now(dt.UTC)
            )
            if not res.ok:
                raise VerificationError(f"GPU {i} evidence does not verify: {res.reason()}")
        state.gpu_attester.set_ready()
    except AttestationError as exc:
        state.gpu_failure = f"attestation: gpu: {exc}"
        log.error("GPU attestation failed: %s", exc)
        return []
    log.info("%d GPU(s) attested", len(evidence))
    return list(evidence)


def _enroll(state: BootState, attester: Attester) -> None:
    """Certificate from the CA at [ca] url: its nonce, our evidence, its chain in x5chain.

    On refusal or when the CA stays unreachable, the boot goes on to an abort report, signed
    under a self-issued certificate that carries the evidence (see _certify).
    """
    cfg = state.cfg
    pinned = None
    if cfg.ca_cert is not None:
        from certs.chain import load_certificates

        try:
            pinned = load_certificates(cfg.ca_cert.read_bytes(), what=str(cfg.ca_cert))[0]
        except OSError as exc:
            raise enroll.EnrollmentError(
                f"{cfg.ca_cert}: cannot read the CA certificate: {exc.strerror}"
            ) from exc
        except CertsError as exc:
            raise enroll.EnrollmentError(str(exc)) from exc
    result = enroll.enroll(
        cfg.ca_url or "",
        state.key.private,
        lambda nonce: _collect(state, attester, nonce),
        attempts=cfg.ca_attempts,
        ca_cert=pinned,
    )
    state.chain = result.chain_der()
    log.info("certificate issued by the CA at %s", cfg.ca_url)


def _certify(state: BootState) -> None:
    if state.chain:
        return  # issued by the CA
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
    meter = hashing_meter(state.cfg.inputs)
    total = len(state.cfg.inputs)
    encrypted = multiparty.encrypted_names(state)
    for index, spec in enumerate(state.cfg.inputs, start=1):
        state.notifier.status(f"measuring {index}/{total} inputs")
        sealed = spec.role == "dataset" and spec.name in encrypted
        try:
            m = stage_input(spec, staging / ("sealed" if sealed else "inputs"), meter=meter)
        except InputError as exc:
            said = str(exc)  # the stager's messages name the input already: say it once
            state.reasons.append(said if spec.label in said else f"{spec.label}: {said}")
            log.error("%s", exc)
            continue
        if sealed:
            state.party.ciphertexts[spec.name] = m
        else:
            state.measurements.append(m)
        log.info(
            "measured %s: %s (%d bytes, %d files)", spec.label, m.digest.digest, m.digest.size, m.digest.files
        )
    meter.finish()
    state.hash_seconds = time.monotonic() - start
    state.stamp("measured")
    log.info("hashing: %s", rate_text(meter.done, state.hash_seconds))


def _extend(state: BootState) -> None:
    """Extend the runtime register with the policy digest, then each input, in order."""
    entries = []
    if state.policy is not None:
        entries.append(f"policy={state.policy.digest}")
    entries += [input_event(m.spec.role, m.spec.name, m.digest.digest) for m in state.measurements]
    entries += [multiparty.encrypted_event(n, m.digest.digest) for n, m in state.party.ciphertexts.items()]
    for event in entries:
        if not _extend_one(state, event):
            return


def _extend_one(state: BootState, event: str) -> bool:
    value = event_value(event)
    if state.attester is not None:
        try:
            state.attester.extend(value, event)
        except AttestationError as exc:
            state.attestation_failed = True
            state.reasons.append(f"attestation: extending the runtime register failed: {exc}")
            return False
    state.events.append({"register": "rtmr3", "event": event, "value": value})
    return True


def _read_initial(state: BootState) -> bool:
    """RTMR3 before the loader's first extension; it must be the boot value (one job per boot)."""
    read = getattr(state.attester, "read_rtmr", None)
    if read is None:
        return True
    try:
        state.rtmr3_initial = read(3)
    except AttestationError as exc:
        state.attestation_failed = True
        state.reasons.append(f"attestation: reading RTMR3 failed: {exc}")
        return False
    if (why := boundary.not_at_boot_value(state.rtmr3_initial)) is not None:
        state.attestation_failed = True
        state.reasons.append(f"attestation: {why}")
        return False
    return True


def _collateral(state: BootState) -> None:
    """Fetch the platform's collateral for the report; an unacceptable TCB is an abort reason."""
    from loader.report import collateral

    settings = state.cfg.collateral
    state.collateral = collateral.fetch_record(state.evidence, settings)
    for error in state.collateral["errors"]:
        log.error("collateral: %s", error)
    try:
        roots = settings.roots()
    except AttestationError as exc:
        state.reasons.append(f"collateral: {exc}")
        return
    judged = collateral.judge(
        state.evidence,
        state.collateral,
        at=dt.datetime.now(dt.UTC),
        accept=settings.accept_tcb,
        gpu_nonce=binding.gpu_nonce(state.key.spki, state.nonce),
        roots=roots,
    )
    for j in judged:
        if j.ok:
            log.info("collateral: %s", j.line())
        else:
            state.reasons.append(f"collateral: {j.line()}")
            log.error("collateral: %s", j.line())


def _no_collateral(state: BootState) -> dict[str, Any]:
    from loader.report.collateral import MOCK_TYPES

    return {"needed": any(e.type not in MOCK_TYPES for e in state.evidence), "sets": [], "errors": []}


def _decide(state: BootState) -> None:
    if state.policy is not None:
        gpus = sum(1 for e in state.evidence if e.type in GPU_EVIDENCE_TYPES)
        state.reasons += decide(
            state.policy,
            multiparty.measured(state),
            state.cfg.tee,
            execution=state.execution,
            gpus=gpus,
            pending=multiparty.pending(state),
        )
    state.stamp("decided")
    if state.reasons:  # the reasons themselves are logged once, with the outcome
        log.warning("decided: abort (%d reason(s)); the workload will not run", len(state.reasons))
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
    run = state.cfg.run
    if run.runtime == "oci" or kind_of(state, "engine") == "oci":
        if (problem := oci_mismatch(run.runtime, kind_of(state, "engine"))) is not None:
            state.reasons.append(problem)
            log.error("abort: %s", problem)
            return
        user = _oci_user(state)
        if user is False or not _mark_start(state):
            return
        state.workload = run_staged_image(run, paths, name=f"tl-{state.run_id}", user=user or None)
        state.containment = _containment_record(state, containment.oci_record(run, user or None))
    else:
        box = _sandbox(state, staging)
        if box is False or not _mark_start(state):
            return
        state.workload = run_process(
            run.command, paths, timeout=run.timeout, extra_env=dict(run.env), sandbox=box or None
        )
        record = box.record() if box else containment.uncontained_record()
        state.containment = _containment_record(state, record)
    state.output = _collect_output(state, paths)


def _sandbox(state: BootState, staging: Path) -> sandbox.Sandbox | bool | None:
    """The engine's sandbox; None with isolation "none"; False (and a reason) when it cannot be set up."""
    cfg = state.cfg
    if cfg.run.isolation == "none":
        log.warning("[run] isolation = 'none': the engine runs with the loader's identity and view")
        return None
    try:
        private = (cfg.path, cfg.policy_path, cfg.spool_dir, cfg.output_dir, cfg.staging_dir)
        private += (cfg.grants.dir,) if cfg.grants else ()
        private += (cfg.tee_root,) if cfg.tee_root != Path("/") else ()
        return sandbox.plan(
            cfg.run, tee_root=cfg.tee_root, gpu_mode=cfg.gpu_mode, workdir=staging, private=private
        )
    except sandbox.ContainmentError as exc:
        state.reasons.append(f"containment: {exc}")
        log.error("abort: containment: %s", exc)
        return False


def _oci_user(state: BootState) -> tuple[int, int] | bool | None:
    """The engine's uid/gid for podman --user as root; None rootless or with isolation "none"."""
    if state.cfg.run.isolation == "none":
        return None
    try:
        identity = sandbox.check_settings(state.cfg.run)
    except sandbox.ContainmentError as exc:
        state.reasons.append(f"containment: {exc}")
        log.error("abort: containment: %s", exc)
        return False
    return None if identity is None or identity.user_namespace else (identity.uid, identity.gid)


def _mark_start(state: BootState) -> bool:
    """The boundary in the hardware record: RTMR3 `workload-start`, before the engine starts."""
    if _extend_one(state, boundary.WORKLOAD_START):
        return True
    log.error("abort: %s", state.reasons[-1])
    return False


def _containment_record(state: BootState, record: dict[str, Any]) -> dict[str, Any]:
    """How the engine was contained, with what the TEE's register records of the boundary."""
    return {**record, "boundary": containment.boundary_text(state.cfg.tee, state.rtmr3_initial)}


def kind_of(state: BootState, role: str) -> str | None:
    return next((m.digest.kind for m in state.measurements if m.spec.role == role), None)


def _collect_output(state: BootState, paths: StagedPaths) -> dict[str, Any] | None:
    """Move the engine's output and logs out of staging; record the output's digest."""
    from loader.measure.digest import digest_path

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
    return {"digest": measured.digest, "size": measured.size, "files": measured.files, "sealed": None}


def _payload(state: BootState) -> dict[str, Any]:
    cfg, policy = state.cfg, state.policy
    total = sum(m.digest.size for m in state.measurements)
    ms = int(state.hash_seconds * 1000)
    wl = state.workload
    verdict = "abort" if wl is None else "run"
    return {
        "format": FORMAT,
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
        "run": state.execution.to_record(),
        "events": state.events,
        "collateral": state.collateral or _no_collateral(state),
        "rtmr3": None if state.rtmr3_initial is None else {"initial": state.rtmr3_initial},
        "containment": state.containment,
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
        "staging": m.spec.staging,
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
