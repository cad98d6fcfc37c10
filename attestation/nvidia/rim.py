"""NVIDIA reference integrity manifests (RIMs): SWID tags (ISO/IEC 19770-2) signed with XML-DSig.

A RIM lists, per measurement index, whether the index is active and its acceptable SHA-384
values (`Hash0`…`HashN-1`, N = `alternatives`). Its `Meta/@colloquialVersion` names the
firmware it describes: a driver version ("550.90.07") or a VBIOS version ("96.00.5E.00.01").

XML parsing is lxml's and XML-DSig (canonicalisation, digests, ECDSA) is signxml's; both are
imported lazily (optional extra "nvidia"). Reference values are read only from the element
signxml returns as signed, never from the document as given, so content outside the signed
reference (signature wrapping) cannot be smuggled in. The signing chain embedded in KeyInfo
is validated with certs.chain (OpenSSL) to the NVIDIA RIM root at the caller's time.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from attestation.errors import AttestationError, EvidenceFormatError, VerificationError
from certs.chain import load_certificates, verify_chain

MAX_RIM_BYTES = 1 << 20
SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
DIGEST_LEN = 48
MAX_ALTERNATIVES = 64
_VBIOS_VERSION = re.compile(r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}")
_DRIVER_VERSION = re.compile(r"\d+(\.\d+){1,3}")
_NEED_EXTRA = "RIM support needs lxml and signxml: pip install 'cvm-trusted-loader[nvidia]'"


class RimUnavailable(AttestationError):
    """lxml/signxml are not installed."""


@dataclass(frozen=True)
class RimMeasurement:
    index: int
    name: str
    active: bool
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class Rim:
    tag_id: str
    name: str
    version: str
    kind: str  # "driver" or "vbios"
    measurements: Mapping[int, RimMeasurement]
    certificates: tuple[x509.Certificate, ...]

    @property
    def active(self) -> list[RimMeasurement]:
        return [m for i, m in sorted(self.measurements.items()) if m.active]


def _etree() -> Any:
    try:
        from lxml import etree
    except ImportError as exc:
        raise RimUnavailable(_NEED_EXTRA) from exc
    return etree


def _parse_xml(data: bytes, what: str) -> Any:
    if len(data) > MAX_RIM_BYTES:
        raise EvidenceFormatError(f"{what}: {len(data)} bytes, more than the {MAX_RIM_BYTES} allowed")
    etree = _etree()
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=False
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise EvidenceFormatError(f"{what}: not well-formed XML ({exc})") from exc
    if root.getroottree().docinfo.doctype:
        raise EvidenceFormatError(f"{what}: a DOCTYPE is not allowed in a RIM")
    return root


def parse(data: bytes, *, what: str = "RIM") -> Rim:
    """Parse a RIM without checking its signature (for display and to find its certificates)."""
    return _from_element(_parse_xml(data, what), what)


def _from_element(root: Any, what: str) -> Rim:
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise EvidenceFormatError(f"{what}: root element expected SWID SoftwareIdentity, found {root.tag}")
    metas = root.findall(f"{{{SWID_NS}}}Meta")
    if len(metas) != 1:
        raise EvidenceFormatError(f"{what}: expected one Meta element, found {len(metas)}")
    version = metas[0].get("colloquialVersion") or ""
    if _VBIOS_VERSION.fullmatch(version):
        kind, version = "vbios", version.upper()
    elif _DRIVER_VERSION.fullmatch(version):
        kind = "driver"
    else:
        raise EvidenceFormatError(
            f"{what}: Meta/@colloquialVersion expected a driver (550.90.07) or VBIOS (96.00.5E.00.01) "
            f"version, found {version!r}"
        )
    payloads = root.findall(f"{{{SWID_NS}}}Payload")
    if len(payloads) != 1:
        raise EvidenceFormatError(f"{what}: expected one Payload element, found {len(payloads)}")
    measurements: dict[int, RimMeasurement] = {}
    for res in payloads[0].findall(f"{{{SWID_NS}}}Resource"):
        m = _measurement(res, what)
        if m.index in measurements:
            raise EvidenceFormatError(f"{what}: measurement index {m.index} listed twice")
        measurements[m.index] = m
    if not measurements:
        raise EvidenceFormatError(f"{what}: no measurement Resource in Payload")
    return Rim(
        tag_id=root.get("tagId") or "",
        name=root.get("name") or "",
        version=version,
        kind=kind,
        measurements=measurements,
        certificates=tuple(_key_info_certificates(root, what)),
    )


def _int_attr(res: Any, attr: str, what: str, limit: int) -> int:
    text = res.get(attr)
    if text is None or not text.isdigit() or int(text) > limit:
        raise EvidenceFormatError(f"{what}: Resource/@{attr} expected an integer ≤ {limit}, found {text!r}")
    return int(text)


def _measurement(res: Any, what: str) -> RimMeasurement:
    if res.get("type") != "Measurement":
        raise EvidenceFormatError(f"{what}: Resource/@type expected 'Measurement', found {res.get('type')!r}")
    index = _int_attr(res, "index", what, 255)
    where = f"{what}: measurement {index}"
    active_text = res.get("active")
    if active_text not in ("True", "False", "true", "false"):
        raise EvidenceFormatError(f"{where}: @active expected True or False, found {active_text!r}")
    size = _int_attr(res, "size", where, 1024)
    if size != DIGEST_LEN:
        raise EvidenceFormatError(f"{where}: @size expected {DIGEST_LEN} (SHA-384), found {size}")
    count = _int_attr(res, "alternatives", where, MAX_ALTERNATIVES)
    if count < 1:
        raise EvidenceFormatError(f"{where}: @alternatives must be at least 1")
    hashes = []
    for n in range(count):
        text = res.get(f"{{{SHA384_NS}}}Hash{n}")
        if text is None or not re.fullmatch(r"[0-9A-Fa-f]{96}", text):
            raise EvidenceFormatError(f"{where}: Hash{n} expected 96 hex digits, found {text!r}")
        hashes.append(bytes.fromhex(text))
    extra = [a for a in res.attrib if a.startswith(f"{{{SHA384_NS}}}Hash{count}")]
    if extra:
        raise EvidenceFormatError(f"{where}: more Hash attributes than @alternatives={count}")
    return RimMeasurement(index, res.get("name") or "", active_text.lower() == "true", tuple(hashes))


def _key_info_certificates(root: Any, what: str) -> list[x509.Certificate]:
    texts = root.findall(f".//{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate")
    certs = []
    for i, el in enumerate(texts):
        try:
            der = base64.b64decode("".join((el.text or "").split()), validate=True)
        except binascii.Error as exc:
            raise EvidenceFormatError(f"{what}: KeyInfo certificate {i} is not base64") from exc
        certs.extend(load_certificates(der, what=f"{what}: KeyInfo certificate {i}"))
    return certs


def verify_signature(data: bytes, *, what: str = "RIM") -> Rim:
    """Check the XML-DSig (ECDSA-SHA384, SHA-384 digests) with the first KeyInfo certificate.

    Returns the RIM as read from the signed content. Only the cryptography is checked here:
    the certificate's validity period is left to `verify_signing_chain` at the caller's time,
    so an expired signer is reported as a chain failure, not as a bad signature.
    """
    unsigned = parse(data, what=what)
    if not unsigned.certificates:
        raise VerificationError(f"{what}: no signing certificate in KeyInfo/X509Data")
    try:
        from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLVerifier
        from signxml.exceptions import InvalidInput, InvalidSignature
    except ImportError as exc:
        raise RimUnavailable(_NEED_EXTRA) from exc
    signer = unsigned.certificates[0]
    config = SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        expect_references=1,
        verification_time=signer.not_valid_before_utc,
    )
    try:
        result = XMLVerifier().verify(data, x509_cert=signer, expect_config=config)
    except (InvalidSignature, InvalidInput) as exc:
        raise VerificationError(f"{what}: XML signature does not verify ({exc})") from exc
    except Exception as exc:  # signxml/lxml raise assorted types on hostile input
        raise VerificationError(
            f"{what}: XML signature could not be checked ({type(exc).__name__}: {exc})"
        ) from exc
    if result.signed_xml is None:
        raise VerificationError(f"{what}: the signed reference is not an XML document")
    signed = _from_element(result.signed_xml, what)
    return Rim(
        signed.tag_id, signed.name, signed.version, signed.kind, signed.measurements, unsigned.certificates
    )


def verify_signing_chain(
    rim: Rim, *, roots: Iterable[x509.Certificate], at: dt.datetime
) -> list[x509.Certificate]:
    """Validate the KeyInfo chain (signer first) to the RIM root at `at`; raises ChainError."""
    signer, *rest = rim.certificates
    return verify_chain(signer, intermediates=rest, roots=roots, at=at)
