"""Helpers for the multi-party tests: the demo's three-party workdir, boot with owner agents,
and a probe that looks for dataset plaintext in staging just before it is wiped."""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from attestation import binding
from attestation.mock.attester import MockAttester
from certs.selfissue import self_issue
from loader.boot import sequence as bootmod
from loader.boot.config import load_config
from loader.boot.keys import EphemeralKey
from loader.boot.sequence import BootOutcome, boot
from loader.cli import demo
from loader.parties import grants

# The CSV header lines of the demo datasets: present in plaintext, absent from ciphertext.
MARKERS = (b"patient,age,hba1c,ldl", b"patient,age,systolic_bp,ldl")


@dataclass
class Probe:
    """Records what boot did with the datasets: decryption calls and plaintext seen at wipe."""

    decrypt_calls: list[str] = field(default_factory=list)
    plaintext_at_wipe: list[str] = field(default_factory=list)
    staging_files_at_wipe: int = 0


def install_probe(monkeypatch: object) -> Probe:
    probe = Probe()
    real_decrypt, real_wipe = grants.decrypt_dataset, bootmod.wipe

    def spy_decrypt(src: Path, name: str, dek: bytes, dest: Path):  # type: ignore[no-untyped-def]
        probe.decrypt_calls.append(name)
        return real_decrypt(src, name, dek, dest)

    def snapshot_wipe(path: Path, requested: str = "auto") -> dict[str, int | str]:
        for dirpath, _, files in os.walk(path):
            for name in files:
                target = Path(dirpath) / name
                probe.staging_files_at_wipe += 1
                os.chmod(target, 0o600)
                data = target.read_bytes()
                if any(m in data for m in MARKERS):
                    probe.plaintext_at_wipe.append(str(target.relative_to(path)))
        return real_wipe(path, requested)

    monkeypatch.setattr(grants, "decrypt_dataset", spy_decrypt)  # type: ignore[attr-defined]
    monkeypatch.setattr(bootmod, "wipe", snapshot_wipe)  # type: ignore[attr-defined]
    return probe


def build(workdir: Path, *, timeout: float = 30) -> Path:
    config = demo.build(workdir, parties=True)
    text = config.read_text().replace("timeout = 60\n", f"timeout = {timeout}\npoll = 0.05\n", 1)
    config.write_text(text)
    return config


def edit_config(config: Path, old: str, new: str) -> None:
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))


def other_cvm_certificate() -> bytes:
    """A correctly attested (mock) certificate of another CVM: a different ephemeral key."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization

    key = EphemeralKey()
    nonce = secrets.token_bytes(32)
    evidence = MockAttester().collect(binding.report_data(key.spki, nonce, []))
    bundle = {"nonce": nonce, "evidence": [evidence.to_cbor_obj()], "claims": {}}
    cert = self_issue(key.private, common_name="another CVM", bundle=bundle, now=dt.datetime.now(dt.UTC))
    return cert.public_bytes(serialization.Encoding.PEM)


def run_with_agents(
    config: Path, workdir: Path, agent: Callable[[], object] | None = None
) -> tuple[BootOutcome, list[BaseException]]:
    """Boot; meanwhile `agent` (default: the honest data owners) answers with grants."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            (agent or (lambda: demo.owners_grant(workdir, timeout=20)))()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    outcome = boot(load_config(config), report_out=workdir / "report.cbor")
    thread.join(timeout=20)
    return outcome, errors


def reasons_matching(outcome: BootOutcome, pattern: str) -> list[str]:
    return [r for r in outcome.reasons if re.search(pattern, r)]
