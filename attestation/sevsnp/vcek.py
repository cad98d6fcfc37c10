"""The AMD-specific X.509 extensions of VCEK and VLEK certificates (AMD KDS spec, pub. 57230).

The certificate is parsed with pyca `cryptography` (serial-0 warnings silenced: every VCEK has
serial 0), the extension values with asn1crypto (strict DER).
OIDs under 1.3.6.1.4.1.3704.1: .1 structVersion, .2 productName (IA5String), .3.1 blSPL,
.3.2 teeSPL, .3.3 snpSPL, .3.8 ucodeSPL, .3.9 fmcSPL (Turin) as INTEGERs; .4 hwID is the raw
chip ID (64 bytes; 8 on Turin) without DER wrapping; .5 cspID names the VLEK's cloud provider.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from attestation.errors import ASN1_PARSE_ERRORS, EvidenceFormatError
from attestation.sevsnp import products
from attestation.sevsnp.products import Product
from certs import memo
from certs.chain import serial_warnings_quiet

ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{ARC}.1"
OID_PRODUCT_NAME = f"{ARC}.2"
OID_HWID = f"{ARC}.4"
OID_CSP_ID = f"{ARC}.5"
SPL_OIDS = {
    f"{ARC}.3.1": "bootloader",
    f"{ARC}.3.2": "tee",
    f"{ARC}.3.3": "snp",
    f"{ARC}.3.8": "microcode",
    f"{ARC}.3.9": "fmc",
}
KIND_BY_CN = {"SEV-VCEK": "vcek", "SEV-VLEK": "vlek"}
MAX_CERT_BYTES = 16 * 1024


@dataclass(frozen=True)
class KeyCertInfo:
    """What a VCEK or VLEK certificate says about the chip and firmware it was issued for."""

    kind: str | None  # "vcek", "vlek", or None for an unexpected subject
    subject_cn: str
    issuer_cn: str
    product_name: str | None
    product: Product | None
    stepping: str | None
    hwid: bytes | None
    csp_id: str | None
    spls: dict[str, int]


def one_line(exc: BaseException) -> str:
    """asn1crypto and OpenSSL messages may span lines; ours do not."""
    return " ".join(str(exc).split())


def _cn(name: x509.Name) -> str:
    """The one common name, "" when there is none or more than one."""
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if len(values) == 1 else ""


_X509_ERRORS = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def _integer(raw: bytes, oid: str, what: str) -> int:
    try:
        value = core.Integer.load(raw, strict=True).native
    except ASN1_PARSE_ERRORS as exc:
        raise EvidenceFormatError(f"{what}: extension {oid} is not a DER INTEGER") from exc
    if not 0 <= value <= 0xFF:
        raise EvidenceFormatError(f"{what}: extension {oid} is {value}, expected an SPL 0..255")
    return int(value)


def _ia5(raw: bytes, oid: str, what: str) -> str:
    try:
        return str(core.IA5String.load(raw, strict=True).native)
    except ASN1_PARSE_ERRORS as exc:
        raise EvidenceFormatError(f"{what}: extension {oid} is not a DER IA5String") from exc


_PARSED: memo.Lru[bytes, KeyCertInfo] = memo.cache()


def parse(der: bytes, *, what: str = "VCEK") -> KeyCertInfo:
    """Read the AMD extensions of one DER certificate; EvidenceFormatError if malformed.

    Parsed once per exact DER (bounded LRU); each caller gets its own `spls` dict."""
    der = bytes(der)
    known = _PARSED.get(der)
    if known is None:
        known = _parse(der, what)
        _PARSED.put(der, known)
    return replace(known, spls=dict(known.spls))


def _parse(der: bytes, what: str) -> KeyCertInfo:
    if len(der) > MAX_CERT_BYTES:
        raise EvidenceFormatError(f"{what}: {len(der)} bytes, more than {MAX_CERT_BYTES}")
    try:
        with serial_warnings_quiet():
            cert = x509.load_der_x509_certificate(der)
            subject_cn, issuer_cn = _cn(cert.subject), _cn(cert.issuer)
            raw_exts = [
                (
                    e.oid.dotted_string,
                    e.value.value if isinstance(e.value, x509.UnrecognizedExtension) else b"",
                )
                for e in cert.extensions
            ]
    except _X509_ERRORS as exc:
        raise EvidenceFormatError(f"{what}: not a DER X.509 certificate ({one_line(exc)})") from exc
    seen: set[str] = set()
    spls: dict[str, int] = {}
    product_name = hwid = csp_id = None
    for oid, raw in raw_exts:
        if oid in seen:
            raise EvidenceFormatError(f"{what}: extension {oid} appears twice")
        seen.add(oid)
        if oid in SPL_OIDS:
            spls[SPL_OIDS[oid]] = _integer(raw, oid, what)
        elif oid == OID_PRODUCT_NAME:
            product_name = _ia5(raw, oid, what)
        elif oid == OID_HWID:
            hwid = bytes(raw)
        elif oid == OID_CSP_ID:
            csp_id = _ia5(raw, oid, what)
    product, stepping = products.from_product_name(product_name) if product_name else (None, None)
    return KeyCertInfo(
        kind=KIND_BY_CN.get(subject_cn),
        subject_cn=subject_cn,
        issuer_cn=issuer_cn,
        product_name=product_name,
        product=product,
        stepping=stepping,
        hwid=hwid,
        csp_id=csp_id,
        spls=spls,
    )
