"""Intel PCS collateral for TDX: TCB Info and QE Identity, as the PCS returns them.

A response is `{"tcbInfo": {...}, "signature": "<hex r‖s>"}` (or `enclaveIdentity`); the
signature (ECDSA P-256, SHA-256) covers the exact bytes of the inner JSON value as they appear
in the response, so we locate that value's byte range instead of re-serialising it. The signer
is the "Intel SGX TCB Signing" certificate of the issuer chain that PCS sends beside it, which
must chain to the Intel SGX Root CA at the evaluation time.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.errors import CollateralError
from certs import jsonlimits
from certs.chain import load_certificates, verify_chain
from certs.errors import CertsError

MAX_COLLATERAL_BYTES = 256 * 1024
TCB_SIGNING_CN = "Intel SGX TCB Signing"

TCB_INFO = "tcb_info.json"
TCB_INFO_CHAIN = "tcb_info_issuer_chain.pem"
QE_IDENTITY = "qe_identity.json"
QE_IDENTITY_CHAIN = "qe_identity_issuer_chain.pem"
PCK_CRL = "pck_crl.der"
PCK_CRL_CHAIN = "pck_crl_issuer_chain.pem"
ROOT_CA_CRL = "root_ca_crl.der"
REQUIRED = (TCB_INFO, TCB_INFO_CHAIN, QE_IDENTITY, QE_IDENTITY_CHAIN)
OPTIONAL = (PCK_CRL, PCK_CRL_CHAIN, ROOT_CA_CRL)

TCB_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    }
)


@dataclass(frozen=True)
class Signed:
    """A PCS response split into the signed value's exact bytes, its decoded form and signature."""

    body_bytes: bytes
    body: dict[str, Any]
    signature: bytes


@dataclass(frozen=True)
class TcbLevel:
    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...]
    status: str
    date: str
    advisories: tuple[str, ...]


@dataclass(frozen=True)
class IsvLevel:
    isvsvn: int
    status: str
    date: str
    advisories: tuple[str, ...]


@dataclass(frozen=True)
class TdxModule:
    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[IsvLevel, ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    signed: Signed
    issue_date: dt.datetime
    next_update: dt.datetime
    fmspc: bytes
    pce_id: bytes
    evaluation_data_number: int
    tdx_module: TdxModule
    tdx_module_identities: tuple[TdxModule, ...]
    levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity:
    signed: Signed
    issue_date: dt.datetime
    next_update: dt.datetime
    evaluation_data_number: int
    miscselect: int
    miscselect_mask: int
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    levels: tuple[IsvLevel, ...]


# ---- the signed envelope ---------------------------------------------------------------------


_DECODER = json.JSONDecoder(object_pairs_hook=jsonlimits.unique_keys)
_WS = " \t\r\n"


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def split_signed(raw: bytes, body_key: str, what: str) -> Signed:
    """Walk the top-level object by hand to keep the exact byte range of `body_key`'s value."""
    if len(raw) > MAX_COLLATERAL_BYTES:
        raise CollateralError(f"{what}: {len(raw)} bytes, more than the {MAX_COLLATERAL_BYTES} allowed")
    try:
        text = raw.decode("ascii")
        jsonlimits.check_depth(raw)
    except UnicodeDecodeError as exc:
        raise CollateralError(f"{what}: not ASCII JSON (byte {exc.start})") from exc
    except jsonlimits.JsonTooDeep as exc:
        raise CollateralError(f"{what}: {exc}") from exc
    try:
        members: dict[str, tuple[Any, int, int]] = {}
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("expected a JSON object")
        pos = _skip_ws(text, pos + 1)
        while True:
            key, pos = _DECODER.raw_decode(text, pos)
            if not isinstance(key, str) or key in members:
                raise ValueError(f"bad or duplicate member name {key!r}")
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                raise ValueError(f"expected ':' at offset {pos}")
            start = _skip_ws(text, pos + 1)
            value, end = _DECODER.raw_decode(text, start)
            members[key] = (value, start, end)
            pos = _skip_ws(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if text[pos : pos + 1] != "}":
                raise ValueError(f"expected ',' or '}}' at offset {pos}")
            if _skip_ws(text, pos + 1) != len(text):
                raise ValueError("trailing data after the object")
            break
    except (ValueError, IndexError) as exc:
        raise CollateralError(f"{what}: not valid JSON ({exc})") from exc
    if set(members) != {body_key, "signature"}:
        raise CollateralError(
            f"{what}: expected members {body_key!r} and 'signature', found {sorted(members)}"
        )
    body, start, end = members[body_key]
    sig_hex = members["signature"][0]
    if not isinstance(body, dict):
        raise CollateralError(f"{what}: {body_key} is not an object")
    signature = _hex(sig_hex, f"{what}: signature", 64)
    return Signed(raw[start:end], body, signature)


# ---- typed field access with one-line errors ---------------------------------------------------


def _hex(value: object, where: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise CollateralError(f"{where}: expected a hex string, found {type(value).__name__}")
    try:
        out = bytes.fromhex(value)
    except ValueError as exc:
        raise CollateralError(f"{where}: not hex") from exc
    if len(out) != size:
        raise CollateralError(f"{where}: expected {size} bytes, found {len(out)}")
    return out


def _int(obj: dict[str, Any], key: str, where: str, limit: int = 0xFFFF) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise CollateralError(f"{where}.{key}: expected an integer 0..{limit}, found {value!r}")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise CollateralError(f"{where}.{key}: expected a string, found {value!r}")
    return value


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise CollateralError(f"{where}.{key}: expected a list, found {type(value).__name__}")
    return value


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CollateralError(f"{where}: expected an object, found {type(value).__name__}")
    return value


def _time(obj: dict[str, Any], key: str, where: str) -> dt.datetime:
    text = _str(obj, key, where)
    try:
        value = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError as exc:
        raise CollateralError(f"{where}.{key}: expected YYYY-MM-DDTHH:MM:SSZ, found {text!r}") from exc
    return value.astimezone(dt.UTC)


def _status(obj: dict[str, Any], where: str) -> str:
    status = _str(obj, "tcbStatus", where)
    if status not in TCB_STATUSES:
        raise CollateralError(f"{where}.tcbStatus: unknown status {status!r}")
    return status


def _advisories(obj: dict[str, Any], where: str) -> tuple[str, ...]:
    ids = obj.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise CollateralError(f"{where}.advisoryIDs: expected a list of strings")
    return tuple(ids)


def _components(obj: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    items = _list(obj, key, where)
    if len(items) != 16:
        raise CollateralError(f"{where}.{key}: expected 16 components, found {len(items)}")
    return tuple(
        _int(_obj(c, f"{where}.{key}[{i}]"), "svn", f"{where}.{key}[{i}]", 255) for i, c in enumerate(items)
    )


def _isv_levels(obj: dict[str, Any], where: str) -> tuple[IsvLevel, ...]:
    out = []
    for i, raw in enumerate(_list(obj, "tcbLevels", where)):
        w = f"{where}.tcbLevels[{i}]"
        level = _obj(raw, w)
        tcb = _obj(level.get("tcb"), f"{w}.tcb")
        out.append(
            IsvLevel(
                _int(tcb, "isvsvn", f"{w}.tcb"),
                _status(level, w),
                _str(level, "tcbDate", w),
                _advisories(level, w),
            )
        )
    return tuple(out)


def _module(obj: dict[str, Any], where: str, ident: str) -> TdxModule:
    return TdxModule(
        id=ident,
        mrsigner=_hex(obj.get("mrsigner"), f"{where}.mrsigner", 48),
        attributes=_hex(obj.get("attributes"), f"{where}.attributes", 8),
        attributes_mask=_hex(obj.get("attributesMask"), f"{where}.attributesMask", 8),
        levels=_isv_levels(obj, where) if "tcbLevels" in obj else (),
    )


# ---- TCB Info and QE Identity ----------------------------------------------------------------


def parse_tcb_info(raw: bytes, what: str = TCB_INFO) -> TcbInfo:
    signed = split_signed(raw, "tcbInfo", what)
    b, w = signed.body, f"{what}: tcbInfo"
    if b.get("id") != "TDX" or b.get("version") != 3:
        raise CollateralError(
            f"{w}: expected id 'TDX' version 3, found {b.get('id')!r} version {b.get('version')!r}"
        )
    if _int(b, "tcbType", w) != 0:
        raise CollateralError(f"{w}.tcbType: expected 0, found {b['tcbType']}")
    levels = []
    for i, raw_level in enumerate(_list(b, "tcbLevels", w)):
        lw = f"{w}.tcbLevels[{i}]"
        level = _obj(raw_level, lw)
        tcb = _obj(level.get("tcb"), f"{lw}.tcb")
        levels.append(
            TcbLevel(
                sgx_components=_components(tcb, "sgxtcbcomponents", f"{lw}.tcb"),
                pcesvn=_int(tcb, "pcesvn", f"{lw}.tcb"),
                tdx_components=_components(tcb, "tdxtcbcomponents", f"{lw}.tcb"),
                status=_status(level, lw),
                date=_str(level, "tcbDate", lw),
                advisories=_advisories(level, lw),
            )
        )
    identities = tuple(
        _module(_obj(m, f"{w}.tdxModuleIdentities[{i}]"), f"{w}.tdxModuleIdentities[{i}]", _str(m, "id", w))
        for i, m in enumerate(b.get("tdxModuleIdentities", []))
    )
    return TcbInfo(
        signed=signed,
        issue_date=_time(b, "issueDate", w),
        next_update=_time(b, "nextUpdate", w),
        fmspc=_hex(b.get("fmspc"), f"{w}.fmspc", 6),
        pce_id=_hex(b.get("pceId"), f"{w}.pceId", 2),
        evaluation_data_number=_int(b, "tcbEvaluationDataNumber", w, 1 << 31),
        tdx_module=_module(_obj(b.get("tdxModule"), f"{w}.tdxModule"), f"{w}.tdxModule", "tdxModule"),
        tdx_module_identities=identities,
        levels=tuple(levels),
    )


def parse_qe_identity(raw: bytes, what: str = QE_IDENTITY) -> QeIdentity:
    signed = split_signed(raw, "enclaveIdentity", what)
    b, w = signed.body, f"{what}: enclaveIdentity"
    if b.get("id") != "TD_QE" or b.get("version") != 2:
        raise CollateralError(
            f"{w}: expected id 'TD_QE' version 2, found {b.get('id')!r} version {b.get('version')!r}"
        )
    return QeIdentity(
        signed=signed,
        issue_date=_time(b, "issueDate", w),
        next_update=_time(b, "nextUpdate", w),
        evaluation_data_number=_int(b, "tcbEvaluationDataNumber", w, 1 << 31),
        miscselect=int.from_bytes(_hex(b.get("miscselect"), f"{w}.miscselect", 4), "big"),
        miscselect_mask=int.from_bytes(_hex(b.get("miscselectMask"), f"{w}.miscselectMask", 4), "big"),
        attributes=_hex(b.get("attributes"), f"{w}.attributes", 16),
        attributes_mask=_hex(b.get("attributesMask"), f"{w}.attributesMask", 16),
        mrsigner=_hex(b.get("mrsigner"), f"{w}.mrsigner", 32),
        isvprodid=_int(b, "isvprodid", w),
        levels=_isv_levels(b, w),
    )


# ---- trust in the signer, and freshness --------------------------------------------------------


def verify_signer(
    signed: Signed,
    chain_pem: bytes,
    *,
    roots: Sequence[x509.Certificate],
    at: dt.datetime,
    root_crl: x509.CertificateRevocationList | None,
    what: str,
) -> str:
    """Check the issuer chain at `at` and the signature over the exact body bytes; return a detail."""
    try:
        certs = load_certificates(chain_pem, what=f"{what} issuer chain")
        leaf = certs[0]
        verify_chain(
            leaf,
            intermediates=certs[1:],
            roots=roots,
            at=at,
            crls=[root_crl] if root_crl is not None else [],
            crl_mode="leaf" if root_crl is not None else "none",
        )
    except CertsError as exc:
        raise CollateralError(f"{what}: issuer chain: {exc}") from exc
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if cn != TCB_SIGNING_CN:
        raise CollateralError(f"{what}: signed by {cn!r}, expected {TCB_SIGNING_CN!r}")
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CollateralError(f"{what}: the TCB Signing key is not ECDSA P-256")
    r, s = int.from_bytes(signed.signature[:32], "big"), int.from_bytes(signed.signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), signed.body_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CollateralError(f"{what}: signature does not verify with the TCB Signing key") from exc
    until = f"{leaf.not_valid_after_utc:%Y-%m-%d}"
    return f"signed by {TCB_SIGNING_CN} (valid until {until}), chain to Intel SGX Root CA"


def freshness(issue: dt.datetime, next_update: dt.datetime, at: dt.datetime) -> tuple[bool, str]:
    if at < issue:
        return False, f"issued {issue:%Y-%m-%dT%H:%M:%SZ}, after the evaluation time {at:%Y-%m-%dT%H:%M:%SZ}"
    if at > next_update:
        return False, f"stale: nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} is before {at:%Y-%m-%dT%H:%M:%SZ}"
    return True, f"issued {issue:%Y-%m-%d}, nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ}"
