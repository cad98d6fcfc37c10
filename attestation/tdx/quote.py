"""The one parser of Intel TDX quotes (DCAP quote format versions 4 and 5).

Layout (Intel TDX DCAP Quoting Library API, "Quote Format"):

    v4: Header(48) ‖ TD report body (TD10, 584) ‖ u32 sig_data_len ‖ sig_data
    v5: Header(48) ‖ u16 body_type ‖ u32 body_size ‖ body (TD10 584 | TD15 648) ‖ u32 sig_data_len ‖ sig_data

    sig_data (ECDSA-256, attestation key type 2):
        quote_signature(64, r‖s) ‖ attestation_key(64, x‖y) ‖ certification_data
    certification_data type 6 (QE report certification data):
        qe_report(384) ‖ qe_report_signature(64) ‖ u16 auth_len ‖ qe_auth_data ‖ certification_data type 5
    certification_data type 5: the PCK certificate chain, PEM, leaf first.

All integers are little-endian. The quote signature covers header ‖ (v5 body descriptor) ‖ body;
`Quote.signed` is exactly those bytes, sliced from the input.

Trailing bytes: several real quotes arrive in a larger buffer (zero padding, or text appended by
test tooling). Bytes after the end implied by sig_data_len are tolerated and counted
(`Quote.trailing`), never fed into any signed computation; inputs above MAX_QUOTE_BYTES are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attestation.errors import EvidenceFormatError

MAX_QUOTE_BYTES = 64 * 1024
"""Real quotes are about 5 KiB (8 KiB when zero-padded); anything beyond this is refused."""

HEADER_LEN = 48
TD10_BODY_LEN = 584
TD15_BODY_LEN = 648
SGX_REPORT_LEN = 384
ECDSA_SIG_LEN = 64
ECDSA_KEY_LEN = 64

TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6

TD_ATTRIBUTES_DEBUG = 1 << 0
"""TUD.DEBUG: the TD runs in debug mode; the host can read and write its memory."""


class _Reader:
    """Bounds-checked little-endian reads over one buffer; errors name the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise EvidenceFormatError(
                f"{self.what}: {field} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos, "rest")

    def done(self, field: str) -> None:
        if self.pos != len(self.data):
            raise EvidenceFormatError(
                f"{self.what}: {len(self.data) - self.pos} unexpected bytes after {field}"
            )


@dataclass(frozen=True)
class Header:
    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """TDREPORT body as carried in the quote; TD15 adds tee_tcb_svn2 and mrservicetd."""

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.td_attributes, "little") & TD_ATTRIBUTES_DEBUG)


@dataclass(frozen=True)
class SgxReportBody:
    """The QE's SGX enclave report body (384 bytes)."""

    raw: bytes
    cpusvn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes


@dataclass(frozen=True)
class Quote:
    header: Header
    body_type: int
    body: TdReportBody
    signed: bytes
    signature: bytes
    attestation_key: bytes
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    length: int
    trailing: int


_TD_FIELDS: tuple[tuple[str, int], ...] = (
    ("tee_tcb_svn", 16),
    ("mrseam", 48),
    ("mrsignerseam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mrtd", 48),
    ("mrconfigid", 48),
    ("mrowner", 48),
    ("mrownerconfig", 48),
    ("rtmr0", 48),
    ("rtmr1", 48),
    ("rtmr2", 48),
    ("rtmr3", 48),
    ("report_data", 64),
)
_TD15_EXTRA: tuple[tuple[str, int], ...] = (("tee_tcb_svn2", 16), ("mrservicetd", 48))


def _parse_header(r: _Reader) -> Header:
    version = r.u16("header.version")
    att_key_type = r.u16("header.att_key_type")
    tee_type = r.u32("header.tee_type")
    reserved = r.take(4, "header.reserved")
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")
    if version not in (4, 5):
        raise EvidenceFormatError(f"TDX quote: header.version is {version}, expected 4 or 5")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise EvidenceFormatError(
            f"TDX quote: header.att_key_type is {att_key_type}, expected {ATT_KEY_ECDSA_P256} (ECDSA P-256)"
        )
    if tee_type != TEE_TYPE_TDX:
        raise EvidenceFormatError(f"TDX quote: header.tee_type is {tee_type:#x}, expected 0x81 (TDX)")
    return Header(version, att_key_type, tee_type, reserved, qe_vendor_id, user_data)


def _parse_body(raw: bytes, body_type: int) -> TdReportBody:
    r = _Reader(raw, "TDX quote body")
    fields = _TD_FIELDS + (_TD15_EXTRA if body_type == BODY_TYPE_TD15 else ())
    values = {name: r.take(size, f"body.{name}") for name, size in fields}
    r.done("body")
    return TdReportBody(**values)


def parse_sgx_report(raw: bytes) -> SgxReportBody:
    if len(raw) != SGX_REPORT_LEN:
        raise EvidenceFormatError(f"QE report: expected {SGX_REPORT_LEN} bytes, found {len(raw)}")
    r = _Reader(raw, "QE report")
    cpusvn = r.take(16, "cpusvn")
    miscselect = r.u32("miscselect")
    r.take(12, "reserved1")
    r.take(16, "isvextprodid")
    attributes = r.take(16, "attributes")
    mrenclave = r.take(32, "mrenclave")
    r.take(32, "reserved2")
    mrsigner = r.take(32, "mrsigner")
    r.take(32, "reserved3")
    r.take(64, "configid")
    isvprodid = r.u16("isvprodid")
    isvsvn = r.u16("isvsvn")
    r.take(2, "configsvn")
    r.take(42, "reserved4")
    r.take(16, "isvfamilyid")
    report_data = r.take(64, "report_data")
    r.done("report_data")
    return SgxReportBody(
        raw, cpusvn, miscselect, attributes, mrenclave, mrsigner, isvprodid, isvsvn, report_data
    )


def _parse_body_descriptor(r: _Reader, version: int) -> tuple[int, int]:
    """(body_type, body_len): fixed TD10 for v4, read from the v5 descriptor."""
    if version == 4:
        return BODY_TYPE_TD10, TD10_BODY_LEN
    body_type = r.u16("body_type")
    body_size = r.u32("body_size")
    expected = {BODY_TYPE_TD10: TD10_BODY_LEN, BODY_TYPE_TD15: TD15_BODY_LEN}.get(body_type)
    if expected is None:
        raise EvidenceFormatError(
            f"TDX quote: body_type is {body_type}, expected 2 (TDX 1.0) or 3 (TDX 1.5); "
            "1 is an SGX enclave report, not a TD"
        )
    if body_size != expected:
        raise EvidenceFormatError(
            f"TDX quote: body_size is {body_size} for body_type {body_type}, expected {expected}"
        )
    return body_type, expected


def _parse_cert_data(r: _Reader, where: str) -> tuple[int, bytes]:
    kind = r.u16(f"{where}.type")
    size = r.u32(f"{where}.size")
    return kind, r.take(size, f"{where}.data")


def parse(data: bytes) -> Quote:
    """Parse a TDX quote (v4 or v5); raise EvidenceFormatError naming the field at fault."""
    if len(data) > MAX_QUOTE_BYTES:
        raise EvidenceFormatError(f"TDX quote: larger than the {MAX_QUOTE_BYTES} bytes allowed")
    r = _Reader(data, "TDX quote")
    header = _parse_header(r)
    body_type, body_len = _parse_body_descriptor(r, header.version)
    body = _parse_body(r.take(body_len, "body"), body_type)
    signed = data[: r.pos]
    sig_len = r.u32("sig_data_len")
    sig = _Reader(r.take(sig_len, "sig_data"), "TDX quote signature data")
    signature = sig.take(ECDSA_SIG_LEN, "quote_signature")
    attestation_key = sig.take(ECDSA_KEY_LEN, "attestation_key")
    outer_type, outer = _parse_cert_data(sig, "certification_data")
    sig.done("certification_data")
    if outer_type != CERT_DATA_QE_REPORT:
        raise EvidenceFormatError(
            f"TDX quote: certification_data.type is {outer_type}, expected {CERT_DATA_QE_REPORT} "
            "(QE report certification data)"
        )
    qe = _Reader(outer, "TDX quote QE report certification data")
    qe_report = parse_sgx_report(qe.take(SGX_REPORT_LEN, "qe_report"))
    qe_report_signature = qe.take(ECDSA_SIG_LEN, "qe_report_signature")
    qe_auth_data = qe.take(qe.u16("qe_auth_data.size"), "qe_auth_data")
    inner_type, pck_chain = _parse_cert_data(qe, "pck_certification_data")
    qe.done("pck_certification_data")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise EvidenceFormatError(
            f"TDX quote: pck_certification_data.type is {inner_type}, expected {CERT_DATA_PCK_CHAIN} "
            "(PEM PCK certificate chain)"
        )
    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_chain,
        length=r.pos,
        trailing=len(data) - r.pos,
    )


def body_claims(body: TdReportBody) -> dict[str, object]:
    """The decoded body as JSON-ready values (hex strings), for claims and policy validation."""
    out: dict[str, object] = {}
    for name, _ in _TD_FIELDS + _TD15_EXTRA:
        value = getattr(body, name)
        if value is not None:
            out[name] = value.hex()
    out["debug"] = body.debug
    return out
