"""Shared pieces of the CA tests: vectors location, CA directories, enrollment requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import binding
from attestation.evidence import Evidence
from attestation.mock.attester import MockAttester
from certs.ca import CertificateAuthority, EnrollmentRequest, init_ca_dir
from certs.csr import build_csr

REPO = Path(__file__).resolve().parents[1]


def make_ca(
    directory: Path, *, allow_mock: bool, policy: str | None = None, clock=None
) -> CertificateAuthority:
    init_ca_dir(directory, allow_mock=allow_mock)
    if policy is not None:
        (directory / "policy.toml").write_text(policy)
    if clock is None:
        return CertificateAuthority.load(directory)
    return CertificateAuthority.load(directory, clock=clock)


def spki_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass
class Cvm:
    """A simulated CVM: its ephemeral key and mock TEE."""

    key: ec.EllipticCurvePrivateKey
    attester: MockAttester

    @classmethod
    def new(cls) -> Cvm:
        return cls(ec.generate_private_key(ec.SECP384R1()), MockAttester())

    @property
    def spki(self) -> bytes:
        return spki_of(self.key)

    def evidence(
        self, nonce: bytes, *, spki: bytes | None = None, other: tuple[Evidence, ...] = ()
    ) -> Evidence:
        return self.attester.collect(binding.report_data(spki or self.spki, nonce, other))

    def request(self, nonce: bytes, **kw: object) -> EnrollmentRequest:
        return EnrollmentRequest(csr=build_csr(self.key), nonce=nonce, evidence=(self.evidence(nonce, **kw),))  # type: ignore[arg-type]
