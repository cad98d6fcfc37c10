"""Helpers for the SEV-SNP tests: vector paths, a fake /dev/sev-guest, and SYNTHETIC test PKI.

Everything named `synthetic_*` or `Test*` here is a test artefact generated on the fly, signed
by keys made in the test run. It is never presented as AMD evidence: real evidence comes only
from the vectors directory (tests/vectors/snp, or $TL_VECTORS/snp).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.sevsnp import ioctl as sevguest
from attestation.sevsnp import report
from tests.vectors import vectors_dir

REPO = Path(__file__).resolve().parents[1]
AT_2026 = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


def snp(name: str) -> bytes:
    return (vectors_dir() / "snp" / name).read_bytes()


# ---------------------------------------------------------------- synthetic PKI (test only)

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SYNTHETIC TEST ONLY - not AMD"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ext(oid: str, der: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), der)


@dataclass
class SyntheticPki:
    """A test ARK (self-signed) and ASVK (RSA-2048, RSASSA-PSS SHA-384) for a given product name."""

    product: str = "Milan"
    kind: str = "vlek"
    ark_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ask_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    not_before: dt.datetime = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    not_after: dt.datetime = dt.datetime(2045, 1, 1, tzinfo=dt.UTC)

    def __post_init__(self) -> None:
        ark_name = _name(f"ARK-{self.product}")
        ask_cn = f"SEV-VLEK-{self.product}" if self.kind == "vlek" else f"SEV-{self.product}"
        ca = x509.BasicConstraints(ca=True, path_length=None)
        self.ark = (
            self._builder(ark_name, ark_name, self.ark_key.public_key())
            .add_extension(ca, critical=True)
            .sign(self.ark_key, hashes.SHA384(), rsa_padding=_PSS)
        )
        self.ask = (
            self._builder(_name(ask_cn), ark_name, self.ask_key.public_key())
            .add_extension(ca, critical=True)
            .sign(self.ark_key, hashes.SHA384(), rsa_padding=_PSS)
        )

    def _builder(self, subject: x509.Name, issuer: x509.Name, key, start=None, end=None):  # type: ignore[no-untyped-def]
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start or self.not_before)
            .not_valid_after(end or self.not_after)
        )

    def leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        *,
        spls: dict[str, int],
        start: dt.datetime,
        end: dt.datetime,
        hwid: bytes | None = None,
    ) -> x509.Certificate:
        oids = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
        subject = _name("SEV-VLEK" if self.kind == "vlek" else "SEV-VCEK")
        b = self._builder(subject, self.ask.subject, key.public_key(), start, end)
        b = b.add_extension(_ext("1.3.6.1.4.1.3704.1.2", _ia5(self.product)), critical=False)
        for name, value in spls.items():
            b = b.add_extension(
                _ext(f"1.3.6.1.4.1.3704.1.{oids[name]}", bytes([2, 1, value])), critical=False
            )
        if hwid is not None:
            b = b.add_extension(_ext("1.3.6.1.4.1.3704.1.4", hwid), critical=False)
        if self.kind == "vlek":
            b = b.add_extension(_ext("1.3.6.1.4.1.3704.1.5", _ia5("synthetic-csp")), critical=False)
        return b.sign(self.ask_key, hashes.SHA384(), rsa_padding=_PSS)

    def crl(self, revoked: list[x509.Certificate], *, signer=None, last=None, nxt=None) -> bytes:  # type: ignore[no-untyped-def]
        b = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(last or dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
            .next_update(nxt or dt.datetime(2027, 6, 1, tzinfo=dt.UTC))
        )
        for cert in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
                .build()
            )
        crl = b.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=_PSS)
        return crl.public_bytes(serialization.Encoding.DER)

    def ark_pem(self) -> bytes:
        return self.ark.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        return self.ask.public_bytes(serialization.Encoding.PEM) + self.ark_pem()


def _ia5(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes([0x16, len(raw)]) + raw


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def resign(raw: bytes, key: ec.EllipticCurvePrivateKey, **fields: int) -> bytes:
    """A SYNTHETIC report: `raw` with u32/u64 fields patched, signed by a test key."""
    buf = bytearray(raw)
    layout = {"signing_key": (report.KEY_INFO, "<I"), "reported_tcb": (report.REPORTED_TCB, "<Q")}
    for name, value in fields.items():
        off, fmt = layout[name]
        if name == "signing_key":
            value = value << 2
        struct.pack_into(fmt, buf, off, value)
    r, s = decode_dss_signature(key.sign(bytes(buf[: report.SIGNED_SIZE]), ec.ECDSA(hashes.SHA384())))
    buf[report.SIGNATURE_R : report.SIGNATURE_R + 72] = r.to_bytes(72, "little")
    buf[report.SIGNATURE_S : report.SIGNATURE_S + 72] = s.to_bytes(72, "little")
    return bytes(buf)


# ---------------------------------------------------------------- fake /dev/sev-guest


@dataclass
class FakeSevGuest:
    """Answers SNP_GET_EXT_REPORT / SNP_GET_REPORT like drivers/virt/coco/sev-guest does.

    It reads the request structures at the addresses the caller passed, as the kernel does, and
    returns `report` (a real vector: it cannot sign fresh ones) and `certs` (a table).
    """

    report: bytes
    certs: bytes = b""
    ext_supported: bool = True
    status: int = 0
    calls: list[tuple[int, bytes, int]] = field(default_factory=list)

    def __call__(self, fd: int, request: int, arg: sevguest.SnpGuestRequestIoctl, mutate: bool) -> int:
        assert mutate and arg.msg_version == sevguest.MSG_VERSION
        if request == sevguest.SNP_GET_EXT_REPORT:
            if not self.ext_supported:
                raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
            req = sevguest.SnpExtReportReq.from_address(arg.req_data)
            inner = req.data
            if self.certs and req.certs_len < len(self.certs):
                req.certs_len = (len(self.certs) + 4095) // 4096 * 4096
                arg.exitinfo2 = sevguest.VMM_ERR_INVALID_LEN << 32
                raise OSError(errno.EIO, "Input/output error")
            ctypes.memmove(req.certs_address, self.certs, len(self.certs))
        elif request == sevguest.SNP_GET_REPORT:
            inner = sevguest.SnpReportReq.from_address(arg.req_data)
        else:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        self.calls.append((request, bytes(inner.user_data), inner.vmpl))
        resp = struct.pack("<II", self.status, len(self.report)) + bytes(24) + self.report
        ctypes.memmove(arg.resp_data, resp, len(resp))
        if self.status:
            arg.exitinfo2 = self.status
            raise OSError(errno.EIO, "Input/output error")
        return 0


def fake_device_tree(tmp: Path) -> Path:
    """A root with an openable <root>/dev/sev-guest (a plain file; the ioctl is injected)."""
    (tmp / "dev").mkdir(parents=True, exist_ok=True)
    (tmp / "dev" / "sev-guest").write_bytes(b"")
    return tmp
