"""Attestation backends and their verifiers.

A library used by the loader, the CA and verifiers; it never imports `loader`.
Backends are looked up by name and imported lazily, so a verifier of one TEE type does not
load the code (or optional dependencies) of the others.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from attestation.errors import AttestationError, AttesterUnavailable
from attestation.evidence import Attester, Check, Evidence, Result, Trust, Verifier

__all__ = [
    "AttestationError",
    "Attester",
    "Check",
    "Evidence",
    "Result",
    "Trust",
    "Verifier",
    "attester_for",
    "detect",
    "verifier_for",
]

# tee name -> "module:factory"; each factory takes (root: Path, **options).
_ATTESTERS: dict[str, str] = {
    "mock": "attestation.mock.attester:MockAttester",
    "tdx": "attestation.tdx.attester:TdxAttester",
    "sev-snp": "attestation.sevsnp.attester:SnpAttester",
}

# evidence type -> "module:class" implementing Verifier.
_VERIFIERS: dict[str, str] = {
    "mock": "attestation.mock.verifier:MockVerifier",
    "mock-gpu": "attestation.nvidia.mockgpu:MockGpuVerifier",
    "tdx": "attestation.tdx.verifier:TdxVerifier",
    "sev-snp": "attestation.sevsnp.verifier:SnpVerifier",
    "nvidia": "attestation.nvidia.verifier:NvidiaVerifier",
}

TEE_TYPES = tuple(_ATTESTERS)


def _load(spec: str) -> type:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def attester_for(tee: str, *, root: Path = Path("/"), **options: object) -> Attester:
    """The attester for a configured TEE name; raises AttesterUnavailable if absent."""
    spec = _ATTESTERS.get(tee)
    if spec is None:
        raise AttesterUnavailable(f"tee: unknown TEE {tee!r}; expected one of {', '.join(_ATTESTERS)}")
    try:
        factory = _load(spec)
    except ImportError as exc:
        raise AttesterUnavailable(f"tee: the {tee} backend is not installed ({exc})") from exc
    return factory(root=root, **options)  # type: ignore[no-any-return]


def verifier_for(evidence_type: str) -> Verifier:
    spec = _VERIFIERS.get(evidence_type)
    if spec is None:
        raise AttestationError(f"evidence type {evidence_type!r} has no verifier")
    try:
        return _load(spec)()  # type: ignore[no-any-return]
    except ImportError as exc:
        raise AttestationError(f"evidence type {evidence_type!r}: verifier not installed ({exc})") from exc


def detect(root: Path = Path("/")) -> str | None:
    """The hardware TEE this guest runs in, or None. Never returns "mock".

    Probes configfs-tsm's provider and the guest device nodes under `root`.
    """
    from attestation import tsm

    provider = tsm.probe_provider(root)
    if provider == "tdx_guest" or (root / "dev/tdx_guest").exists():
        return "tdx"
    if provider == "sev_guest" or (root / "dev/sev-guest").exists():
        return "sev-snp"
    return None
