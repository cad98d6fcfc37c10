"""Shared pieces of the CA tests: vectors location, CA directories, enrollment requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation import binding
from attestation.evidence import Evidence
from attestation.mock.attester import MockAttester
from certs.ca.authority import CertificateAuthority, EnrollmentRequest, init_ca_dir
from certs.csr import build_csr

REPO = Path(__file__).resolve().parents[1]


SYNTHETIC_TDX = {
    "name": "synthetic-test-tdx",  # SYNTHETIC: no real TD has these values
    "type": "tdx",
    "values": {
        **{name: ["5a" * 48] for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrseam")},
        "td_attributes": ["0000000000000000"],
        "xfam": ["e702060000000000"],
    },
}


def pin_hardware(directory: Path) -> None:
    """Turn the policy `ca init` (without --allow-mock) writes into one that loads: reference
    values with a SYNTHETIC TDX entry, as an operator pins their images (docs/appraisal.md)."""
    from attestation.reference import reference_document

    (directory / "reference.json").write_bytes(reference_document([SYNTHETIC_TDX]))
    path = directory / "policy.toml"
    text = path.read_text()
    assert '# reference = "reference.json"' in text
    path.write_text(text.replace('# reference = "reference.json"', 'reference = "reference.json"', 1))


def make_ca(
    directory: Path, *, allow_mock: bool, policy: str | None = None, clock=None
) -> CertificateAuthority:
    init_ca_dir(directory, allow_mock=allow_mock)
    if not allow_mock:
        pin_hardware(directory)
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
