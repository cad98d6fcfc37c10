"""A mock GPU for tests and demos: SPDM-shaped reports signed by a test-only chain.

The keys are derived from published seeds (anyone can forge these reports: that is the point
of marking them), certificate names say MOCK, the evidence type is "mock-gpu", and
MockGpuVerifier rejects it unless Trust.allow_mock is set. The report layout, parser and
verification steps are the NVIDIA ones, so the nonce binding and composite evidence can be
exercised end to end without hardware.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.evidence import ChecksBuilder, Evidence, Result, Trust
from attestation.mock.root import P384_ORDER
from attestation.nvidia import opaque, spdm
from attestation.nvidia.attester import NvidiaAttester
from attestation.nvidia.device import FWID_EXTENSION_OID, SHA384_OID, _CompositeDeviceId
from attestation.nvidia.verifier import RIM_ROOT_KEY, _roots, _Run, rim_roots, verify_gpu_report

ROOT_SEED = b"trusted-loader mock GPU root -- NOT A SECRET, NOT HARDWARE -- v1"
LEAF_SEED = b"trusted-loader mock GPU leaf -- NOT A SECRET, NOT HARDWARE -- v1"
MOCK_FWID = hashlib.sha384(b"trusted-loader mock GPU firmware").digest()
MOCK_DRIVER = "0.0.0"
MOCK_MEASUREMENTS = 8
_NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


def _key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha512(seed).digest(), "big") % (P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trusted-loader MOCK"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


ROOT_NAME = _name("MOCK GPU root -- NOT HARDWARE")
LEAF_NAME = _name("MOCK GPU leaf -- NOT HARDWARE")


def _fwid_extension(device_key: ec.EllipticCurvePublicKey) -> x509.UnrecognizedExtension:
    spki = device_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    value = _CompositeDeviceId(
        {
            "version": 1,
            "device_key": asn1_keys.PublicKeyInfo.load(spki),
            "fwid": {"hash_alg": SHA384_OID, "digest": MOCK_FWID},
        }
    ).dump()
    return x509.UnrecognizedExtension(FWID_EXTENSION_OID, value)


@functools.cache
def root_certificate() -> x509.Certificate:
    key = _key(ROOT_SEED)
    return (
        x509.CertificateBuilder()
        .subject_name(ROOT_NAME)
        .issuer_name(ROOT_NAME)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384(), ecdsa_deterministic=True)
    )


@functools.cache
def leaf_certificate() -> x509.Certificate:
    root_key, key = _key(ROOT_SEED), _key(LEAF_SEED)
    return (
        x509.CertificateBuilder()
        .subject_name(LEAF_NAME)
        .issuer_name(ROOT_NAME)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .add_extension(_fwid_extension(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA384(), ecdsa_deterministic=True)
    )


def chain_pem() -> bytes:
    return b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (leaf_certificate(), root_certificate())
    )


def mock_measurement(index: int) -> bytes:
    return hashlib.sha384(b"trusted-loader mock GPU measurement %d" % index).digest()


def reference_entry(name: str = "trusted-loader-mock-gpu") -> dict[str, object]:
    """The reference-values entry (attestation/reference.py) of the mock GPU."""
    from attestation.nvidia.opaque import format_vbios_version

    values = {"driver_version": [MOCK_DRIVER], "vbios_version": [format_vbios_version(bytes(8))]}
    return {"name": name, "type": "mock-gpu", "values": values}


@dataclass
class MockGpu:
    """One mock GPU: answers a nonce with a freshly signed report."""

    fwid: bytes = MOCK_FWID

    def certificate_chain(self) -> bytes:
        return chain_pem()

    def attestation_report(self, nonce: bytes) -> bytes:
        request = spdm.encode_request(nonce)
        opaque_data = opaque.encode(
            [
                (opaque.DRIVER_VERSION, MOCK_DRIVER.encode() + b"\x00"),
                (opaque.VBIOS_VERSION, bytes(8)),
                (opaque.PROJECT, b"MOCK\x00"),
                (opaque.FWID, self.fwid),
            ]
        )
        measurements = [(i, mock_measurement(i)) for i in range(1, MOCK_MEASUREMENTS + 1)]
        response = spdm.encode_response_unsigned(measurements, os.urandom(spdm.NONCE_LEN), opaque_data)
        der = _key(LEAF_SEED).sign(request + response, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


class MockNvml:
    """The subset of pynvml the attester uses, over in-process devices (MockGpu or test fakes).

    Devices provide `certificate_chain() -> bytes` and `attestation_report(nonce) -> bytes`.
    """

    NVML_CC_SYSTEM_FEATURE_ENABLED = 1
    NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = 0
    NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = 1

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[Any], *, cc_enabled: bool = True, devtools: bool = False) -> None:
        self.devices = devices
        self.cc_enabled, self.devtools = cc_enabled, devtools
        self.initialised = 0
        self.ready_state: int | None = None

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlSystemGetConfComputeState(self) -> SimpleNamespace:
        return SimpleNamespace(environment=2, ccFeature=int(self.cc_enabled), devToolsMode=int(self.devtools))

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return self.devices[index]

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: Any) -> SimpleNamespace:
        chain = handle.certificate_chain()
        return SimpleNamespace(
            attestationCertChainSize=len(chain), attestationCertChain=chain + bytes(0x1400 - len(chain))
        )

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: Any, nonce: bytes) -> SimpleNamespace:
        report = handle.attestation_report(bytes(nonce))
        return SimpleNamespace(
            attestationReportSize=len(report), attestationReport=report + bytes(0x2000 - len(report))
        )

    def nvmlSystemSetConfComputeGpusReadyState(self, state: int) -> None:
        self.ready_state = state


class MockGpuAttester(NvidiaAttester):
    """The NVIDIA attester's code path over mock GPUs; evidence type "mock-gpu"."""

    evidence_type = "mock-gpu"

    def __init__(self, root: Path = Path("/"), *, count: int = 1, **options: object) -> None:
        super().__init__(root, nvml=MockNvml([MockGpu() for _ in range(count)]), **options)


class MockGpuVerifier:
    """Verifier for "mock-gpu" evidence: the NVIDIA steps with the mock root; refused unless allow_mock."""

    type_name = "mock-gpu"

    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes | None,
        trust: Trust,
        at: dt.datetime,
    ) -> Result:
        run = _Run(checks=ChecksBuilder(), claims={"mock": True})
        run.checks.add(
            "mock_allowed",
            trust.allow_mock,
            "mock GPU evidence accepted (allow_mock)"
            if trust.allow_mock
            else (
                "evidence is from the software mock GPU, not hardware; "
                "accept it with --allow-mock (allow_mock = true in a CA policy)"
            ),
        )
        return verify_gpu_report(
            evidence,
            expected_nonce=expected_report_data,
            trust=trust,
            at=at,
            type_name=self.type_name,
            device_root_list=[root_certificate()],
            rim_root_list=_roots(trust, RIM_ROOT_KEY, rim_roots()),
            run=run,
            is_mock=True,
        )
