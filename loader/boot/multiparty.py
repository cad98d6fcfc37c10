"""The boot steps of the multi-party flow, called from loader/boot/sequence.py.

1. After the certificate: publish it (`[grants] cert_out`) so data owners can verify its
   evidence and make grants to its key.
2. With the approved list: check the parties' signatures (loader/report/signing.py) and load the
   output recipient's key; every problem is an abort reason.
3. Measure: encrypted datasets are staged under staging/sealed and measured as ciphertext.
4. Decide on everything but the encrypted datasets' plaintext (`pending`).
5. Only if nothing failed: wait (bounded) for one grant per encrypted dataset, check every
   grant's bindings (dataset, CVM key, approved-list digest), unwrap every data key, and only then
   decrypt each dataset into staging/inputs/dataset/NAME, measure the plaintext and decide again.
6. After the workload: seal output and logs to the order owner (loader/parties/seal.py).

The data keys are held in local variables only while their dataset is decrypted; Python cannot
zero them (neither can OpenSSL's copies be reached), so they are dropped as early as possible.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from attestation import AttestationError
from attestation.rtmr import event_value
from loader.boot.stage import Measurement
from loader.errors import InputError, LoaderError, TrustError
from loader.parties import grants as grantlib
from loader.parties.seal import Sealed, seal
from loader.publish.spool import atomic_write
from loader.report.decide import Measured, decide
from loader.report.document import input_event, parse_utc
from loader.report.partykeys import PublicKey, load_public, spki
from loader.report.signing import check_signatures

if TYPE_CHECKING:
    from loader.boot.runner import StagedPaths
    from loader.boot.sequence import BootState

log = logging.getLogger("trusted-loader")
MAX_SIGNATURE_FILE = 64 << 10


@dataclass
class PartyState:
    signatures: list[tuple[str, bytes]] = field(default_factory=list)
    signers: list[dict[str, Any]] = field(default_factory=list)
    recipient: PublicKey | None = None
    ciphertexts: dict[str, Measurement] = field(default_factory=dict)
    grants: dict[str, grantlib.Grant] = field(default_factory=dict)
    decrypted: list[str] = field(default_factory=list)
    sealed: Sealed | None = None


def encrypted_names(state: BootState) -> tuple[str, ...]:
    return state.cfg.grants.datasets if state.cfg.grants else ()


def encrypted_event(name: str, digest: str) -> str:
    return f"dataset:{name}:encrypted={digest}"


def publish_certificate(state: BootState) -> None:
    """Write the attested certificate (PEM chain) where the data owners pick it up."""
    settings = state.cfg.grants
    if settings is None or state.attestation_failed:
        return
    from cryptography import x509

    pem = b"".join(
        x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM) for der in state.chain
    )
    try:
        settings.cert_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(settings.cert_out, pem)
    except (OSError, LoaderError) as exc:
        state.reasons.append(f"grants: cannot publish the certificate to {settings.cert_out}: {exc}")
        return
    log.info("attested certificate published at %s; waiting for grants", settings.cert_out)


def _read_limited(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(27, f"larger than {limit} bytes")
    return data


def check_policy(state: BootState) -> None:
    """Signatures over the approved list, and the sealed-output recipient's key."""
    cfg = state.cfg
    if cfg.output_recipient is not None:
        try:
            state.party.recipient = load_public(cfg.output_recipient, "output recipient key")
        except LoaderError as exc:
            state.reasons.append(f"output: {exc}")
    if cfg.signing is None or state.policy is None:
        return
    keys: dict[str, PublicKey] = {}
    for name, path in cfg.signing.signers:
        try:
            keys[name] = load_public(path, f"signer {name!r} key")
        except LoaderError as exc:
            state.reasons.append(f"policy signature: {exc}")
    state.party.signers = [
        {"name": name, "key": spki(key), "required": name in cfg.signing.required}
        for name, key in keys.items()
    ]
    for path in cfg.signing.signatures:
        try:
            state.party.signatures.append((path.name, _read_limited(path, MAX_SIGNATURE_FILE)))
        except OSError as exc:
            state.reasons.append(f"policy signature {path.name}: cannot read {path}: {exc.strerror}")
    at = parse_utc(state.times["started"])
    result = check_signatures(state.policy.raw, state.party.signatures, keys, cfg.signing.required, at)
    state.reasons += result.reasons
    if result.verified:
        log.info("approved list signed by %s", ", ".join(result.verified))


def measured(state: BootState) -> list[Measured]:
    return [Measured(m.spec.role, m.spec.name, m.digest.digest, m.digest.kind) for m in state.measurements]


def pending(state: BootState) -> tuple[str, ...]:
    """Encrypted datasets whose plaintext has not been measured (yet)."""
    return tuple(n for n in state.party.ciphertexts if n not in state.party.decrypted)


def unlock(state: BootState, staging: Path) -> None:
    """Grants -> data keys -> plaintext datasets in staging, measured and decided on."""
    assert state.policy is not None and state.cfg.grants is not None
    policy = state.policy.digest
    names = list(state.party.ciphertexts)
    if not _collect_grants(state, names):
        return
    for name in names:
        state.reasons += grantlib.check_grant(
            state.party.grants[name], dataset=name, policy=policy, cvm_spki=state.key.spki
        )
    if state.reasons:
        return
    keys: dict[str, bytes] = {}
    for name in names:
        try:
            keys[name] = grantlib.unwrap_grant(
                state.party.grants[name], state.key.private, dataset=name, policy=policy
            )
        except TrustError as exc:
            state.reasons.append(str(exc))
    if state.reasons:
        return
    for name in names:
        if not _decrypt_one(state, staging, name, keys.pop(name)):
            return
    keys.clear()
    state.reasons += decide(state.policy, measured(state), state.cfg.tee, execution=state.execution)


def _collect_grants(state: BootState, names: list[str]) -> bool:
    settings = state.cfg.grants
    assert settings is not None
    deadline = time.monotonic() + settings.timeout
    errors: dict[str, str] = {}
    while True:
        for name in names:
            if name in state.party.grants:
                continue
            path = settings.dir / f"{name}.grant"
            try:
                data = _read_limited(path, grantlib.MAX_GRANT_BYTES)
                state.party.grants[name] = grantlib.parse_grant(data, f"grant for dataset {name!r} ({path})")
                errors.pop(name, None)
            except FileNotFoundError:
                errors[name] = (
                    f"grant for dataset {name!r}: {path} did not arrive within {settings.timeout:g} s"
                )
            except OSError as exc:
                errors[name] = f"grant for dataset {name!r}: cannot read {path}: {exc.strerror}"
            except TrustError as exc:  # maybe still being written; retried until the deadline
                errors[name] = str(exc)
        if len(state.party.grants) == len(names):
            return True
        if time.monotonic() >= deadline:
            state.reasons += [errors[n] for n in names if n in errors]
            return False
        time.sleep(settings.poll)


def _decrypt_one(state: BootState, staging: Path, name: str, dek: bytes) -> bool:
    cipher = state.party.ciphertexts[name]
    dest = staging / "inputs" / "dataset" / name
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    start = time.monotonic()
    state.party.decrypted.append(name)
    try:
        digest = grantlib.decrypt_dataset(cipher.staged, name, dek, dest)
    except (TrustError, InputError, OSError) as exc:
        state.reasons.append(f"dataset {name!r}: decryption failed: {exc}")
        return False
    finally:
        del dek
    m = Measurement(cipher.spec, digest, dest, time.monotonic() - start)
    state.measurements.append(m)
    event = input_event("dataset", name, digest.digest)
    try:
        if state.attester is not None:
            state.attester.extend(event_value(event), event)
    except AttestationError as exc:
        state.attestation_failed = True
        state.reasons.append(f"attestation: extending the runtime register failed: {exc}")
        return False
    state.events.append({"register": "rtmr3", "event": event, "value": event_value(event)})
    log.info("decrypted dataset %r in staging: %s (%d bytes)", name, digest.digest, digest.size)
    return True


def seal_output(state: BootState, paths: StagedPaths, target: Path) -> dict[str, Any] | None:
    """Seal output/ and logs/ to the order owner into target/output.sealed; record its digest."""
    recipient = state.party.recipient
    assert recipient is not None
    policy = state.policy
    context = {"job": state.cfg.job_id, "order": policy.order if policy else "", "run": state.run_id}
    try:
        sealed = seal(
            [("output/", paths.output), ("logs/", paths.logs)],
            recipient,
            target / "output.sealed",
            context=context,
        )
    except LoaderError as exc:
        state.output_error = f"output: cannot seal: {exc}"
        return None
    state.party.sealed = sealed
    log.info("output sealed to %s: %s", sealed.recipient, sealed.digest)
    return {
        "digest": sealed.digest,
        "size": sealed.size,
        "files": sealed.files,
        "sealed": {"file": sealed.path.name, "recipient": sealed.recipient},
    }


def policy_record(state: BootState) -> dict[str, Any]:
    return {
        "signatures": [{"file": label, "cose": data} for label, data in state.party.signatures],
        "signers": state.party.signers,
    }


def input_records(state: BootState, entry: Any) -> list[dict[str, Any]]:
    """Report input entries in the configuration's order; an encrypted dataset not decrypted
    (the job aborted first) has digest "" and only its ciphertext recorded."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for m in state.measurements:
        record = entry(m)
        record["encrypted"] = _encrypted(state, m.spec.name) if m.spec.role == "dataset" else None
        records[(m.spec.role, m.spec.name)] = record
    for name in pending(state):
        record = entry(state.party.ciphertexts[name])
        record.update(digest="", kind="", size=0, files=0, encrypted=_encrypted(state, name))
        records[("dataset", name)] = record
    order = [(s.role, s.name) for s in state.cfg.inputs]
    return [records[k] for k in sorted(records, key=lambda k: order.index(k) if k in order else len(order))]


def _encrypted(state: BootState, name: str) -> dict[str, Any] | None:
    cipher = state.party.ciphertexts.get(name)
    if cipher is None:
        return None
    grant = state.party.grants.get(name)
    return {
        "digest": cipher.digest.digest,
        "size": cipher.digest.size,
        "grant": grant.digest if grant else "",
    }


def wipe_record(state: BootState, wiped: dict[str, int | str]) -> dict[str, int | str]:
    return {**wiped, "decrypted": len(state.party.decrypted)}
