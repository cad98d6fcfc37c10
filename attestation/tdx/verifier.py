"""Verification of a TDX quote: signatures, PCK chain, CRLs, and (with collateral) the TCB status.

Checks, in order, each reported by name: format, qe_vendor_id, pck_chain (to the Intel SGX Root
CA at `at`, with CRLs when given), pck_revocation, pck_extensions, qe_report_signature,
qe_enclave (Intel's TD QE, with or without collateral), qe_report_data, quote_signature,
report_data (when expected), and with collateral: collateral, tcb_info, tcb_info_fresh,
qe_identity, qe_identity_fresh, tcb_evaluation, tcb_status.

Trust: roots["intel_root"] replaces the bundled Intel SGX Root CA; collateral is keyed by the
PCS file names in `collateral.REQUIRED`/`OPTIONAL`; options["accept_tcb"] is the set of accepted
TCB statuses (default {"UpToDate"}); options["require_collateral"] makes a verification without
TCB evaluation fail; options["require_crl"] makes one without a PCK CRL fail.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from attestation.errors import AttestationError, CollateralError, EvidenceFormatError
from attestation.evidence import ChecksBuilder, Evidence, Result, Trust
from attestation.tdx import collateral as coll
from attestation.tdx import pck, quote, tcb
from certs import memo
from certs.chain import load_certificates, load_crl, verify_chain
from certs.errors import CertsError

DEFAULT_ACCEPT = frozenset({"UpToDate"})
PCK_LEAF_CN = "Intel SGX PCK Certificate"
ROOT_KEY = "intel_root"


@functools.cache
def bundled_root() -> x509.Certificate:
    data = resources.files("attestation.tdx").joinpath("roots/intel_sgx_root_ca.pem").read_bytes()
    return load_certificates(data, what="bundled Intel SGX Root CA")[0]


def _roots(trust: Trust) -> list[x509.Certificate]:
    if ROOT_KEY in trust.roots:
        return load_certificates(trust.roots[ROOT_KEY], what="Intel root (trust.roots['intel_root'])")
    return [bundled_root()]


def _ecdsa_p256_verify(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
    r, s = int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _attestation_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def _pck_chain_certs(q: quote.Quote) -> list[x509.Certificate]:
    """The PEM chain, refused unless it is exactly the canonical PEM of its certificates.

    Intel's QE emits canonical PEM (64-column base64, LF), sometimes NUL-terminated; demanding
    that byte form leaves no unauthenticated slack in the quote.
    """
    pem = q.pck_chain_pem[:-1] if q.pck_chain_pem.endswith(b"\x00") else q.pck_chain_pem
    certs = load_certificates(pem, what="PCK certificate chain")
    canonical = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if pem != canonical:
        raise EvidenceFormatError("PCK certificate chain: not in canonical PEM form (altered encoding)")
    if len(certs) < 2:
        raise EvidenceFormatError(f"PCK certificate chain: {len(certs)} certificate(s), expected leaf and CA")
    return certs


def _same_as_verified(embedded: list[x509.Certificate], verified: list[x509.Certificate]) -> None:
    """Every embedded certificate must be one OpenSSL validated, including the root copy, which
    path building would otherwise ignore in favour of the trusted root."""
    der = serialization.Encoding.DER
    if len(embedded) > len(verified) or any(
        a is not b and a.public_bytes(der) != b.public_bytes(der)
        for a, b in zip(embedded, verified, strict=False)
    ):
        raise EvidenceFormatError(
            "PCK certificate chain: embedded certificates differ from the validated chain"
        )


@dataclass(frozen=True)
class _Verified:
    """What a full check derived from exact bytes, reused while `windows` hold at a call's `at`."""

    value: Any
    windows: memo.Windows


def _exact(value: bytes | None) -> bytes | None:
    """A cache-key part: the exact bytes (a bytearray or memoryview copied), None when absent."""
    return None if value is None else bytes(value)


_PCK_PATHS: memo.Lru[memo.Key, _Verified] = memo.cache()
_PCK_EXTENSIONS: memo.Lru[bytes, pck.PckExtensions] = memo.cache()
_SIGNED: memo.Lru[memo.Key, _Verified] = memo.cache()


def _verified_pck_chain(
    run: _Run, q: quote.Quote, crls: list[x509.CertificateRevocationList], mode: str
) -> list[x509.Certificate]:
    """The embedded PCK chain, validated to the root at `run.at` with the CRLs: in full on the
    first call for these exact bytes (chain, roots, CRLs, mode), then only its validity windows."""
    col = run.trust.collateral
    key = (
        _exact(q.pck_chain_pem),
        _exact(run.trust.roots.get(ROOT_KEY)),
        _exact(col.get(coll.PCK_CRL)),
        _exact(col.get(coll.ROOT_CA_CRL)),
        mode,
    )
    known = _PCK_PATHS.get(key)
    if known is not None and known.windows.hold_at(run.at):
        return list(known.value)
    certs = _pck_chain_certs(q)
    chain = verify_chain(
        certs[0],
        intermediates=certs[1:],
        roots=_roots(run.trust),
        at=run.at,
        crls=crls,
        crl_mode=mode,  # type: ignore[arg-type]
    )
    _same_as_verified(certs, chain)
    if _cn(certs[0]) != PCK_LEAF_CN:
        raise EvidenceFormatError(
            f"PCK certificate chain: leaf is {_cn(certs[0])!r}, expected {PCK_LEAF_CN!r}"
        )
    _PCK_PATHS.put(key, _Verified(tuple(certs), memo.Windows.of(chain, crls if mode != "none" else ())))
    return certs


def _pck_extensions(pem: bytes, leaf: x509.Certificate) -> pck.PckExtensions:
    """The leaf's SGX extensions, parsed once per exact chain bytes (the leaf is their first cert)."""
    pem = bytes(pem)
    known = _PCK_EXTENSIONS.get(pem)
    if known is None:
        known = pck.parse_extensions(leaf)
        _PCK_EXTENSIONS.put(pem, known)
    return known


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


class _Run:
    """State of one verification: the checks so far and the claims decoded."""

    def __init__(self, trust: Trust, at: dt.datetime) -> None:
        self.trust = trust
        self.at = at
        self.checks = ChecksBuilder()
        self.claims: dict[str, Any] = {"tee": "tdx", "tcb_evaluated": False}
        self.tcb_status: str | None = None
        self.advisories: tuple[str, ...] = ()

    def result(self, report_data: bytes = b"") -> Result:
        return Result(
            "tdx",
            self.checks.build(),
            self.claims,
            report_data=report_data,
            tcb_status=self.tcb_status,
            advisories=self.advisories,
        )


class TdxVerifier:
    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes | None,
        trust: Trust,
        at: dt.datetime,
    ) -> Result:
        run = _Run(trust, at)
        if evidence.type != "tdx":
            run.checks.fail("format", f"expected evidence type 'tdx', found {evidence.type!r}")
            return run.result()
        try:
            q = quote.parse(evidence.data)
        except EvidenceFormatError as exc:
            run.checks.fail("format", str(exc))
            return run.result()
        _describe(run, q)
        leaf_ext = _quote_checks(run, q)
        if expected_report_data is not None:
            same = hmac.compare_digest(q.body.report_data, expected_report_data)
            run.checks.add(
                "report_data",
                same,
                "matches the expected binding"
                if same
                else f"expected {expected_report_data.hex()[:32]}…, found {q.body.report_data.hex()[:32]}…",
            )
        _collateral_checks(run, q, leaf_ext)
        return run.result(q.body.report_data)


def _describe(run: _Run, q: quote.Quote) -> None:
    kind = "TDX 1.5 (TD15)" if q.body_type == quote.BODY_TYPE_TD15 else "TDX 1.0 (TD10)"
    extra = f", {q.trailing} trailing bytes outside the quote ignored" if q.trailing else ""
    run.checks.ok("format", f"quote v{q.header.version}, {kind} body, {q.length} bytes{extra}")
    run.claims.update(
        {
            "quote_version": q.header.version,
            "body_type": q.body_type,
            "trailing_bytes": q.trailing,
            **quote.body_claims(q.body),
            "qe_isvsvn": q.qe_report.isvsvn,
            "qe_mrsigner": q.qe_report.mrsigner.hex(),
            "qe_vendor_id": q.header.qe_vendor_id.hex(),
        }
    )
    same = q.header.qe_vendor_id == quote.INTEL_QE_VENDOR_ID
    run.checks.add(
        "qe_vendor_id",
        same,
        "Intel QE"
        if same
        else f"expected {quote.INTEL_QE_VENDOR_ID.hex()}, found {q.header.qe_vendor_id.hex()}",
    )


def _load_crls(run: _Run) -> tuple[list[x509.CertificateRevocationList], str]:
    """(CRLs, OpenSSL crl_mode) from the collateral; a bad or partial set fails pck_revocation."""
    col = run.trust.collateral
    crls = []
    for name in (coll.PCK_CRL, coll.ROOT_CA_CRL):
        if name in col:
            crls.append(load_crl(col[name], what=name))
    if coll.ROOT_CA_CRL in col and coll.PCK_CRL not in col:
        raise CollateralError(
            f"{coll.ROOT_CA_CRL} given without {coll.PCK_CRL}: the PCK leaf would go unchecked"
        )
    mode = "all" if len(crls) == 2 else "leaf" if crls else "none"
    return crls, mode


def _quote_checks(run: _Run, q: quote.Quote) -> pck.PckExtensions | None:
    checks = run.checks
    leaf: x509.Certificate | None = None
    ext: pck.PckExtensions | None = None
    try:
        crls, mode = _load_crls(run)
        revocation_ok = True
    except (CertsError, CollateralError) as exc:
        crls, mode, revocation_ok = [], "none", False
        checks.fail("pck_revocation", str(exc))
    try:
        certs = _verified_pck_chain(run, q, crls, mode)
        leaf = certs[0]
        checks.ok(
            "pck_chain", f"{PCK_LEAF_CN} (until {leaf.not_valid_after_utc:%Y-%m-%d}) ← {_cn(certs[1])} ← root"
        )
        run.claims["pck_not_after"] = f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    except (AttestationError, CertsError) as exc:
        checks.fail("pck_chain", str(exc))
    if revocation_ok:
        if mode != "none" and leaf is not None:
            checks.ok(
                "pck_revocation",
                f"not revoked ({'PCK CA and Root CA CRLs' if mode == 'all' else 'PCK CA CRL'})",
            )
        elif mode == "none":
            required = bool(run.trust.options.get("require_crl"))
            checks.add("pck_revocation", not required, f"not checked: no {coll.PCK_CRL} given")
            run.claims["crl_checked"] = False
    if leaf is not None:
        try:
            ext = _pck_extensions(q.pck_chain_pem, leaf)
            checks.ok(
                "pck_extensions", f"FMSPC {ext.fmspc.hex()}, PCE-ID {ext.pceid.hex()}, PCESVN {ext.pcesvn}"
            )
            run.claims.update(
                {
                    "fmspc": ext.fmspc.hex(),
                    "pceid": ext.pceid.hex(),
                    "pcesvn": ext.pcesvn,
                    "cpusvn": ext.cpusvn.hex(),
                }
            )
        except EvidenceFormatError as exc:
            checks.fail("pck_extensions", str(exc))
        key = leaf.public_key()
        ok = isinstance(key, ec.EllipticCurvePublicKey) and _ecdsa_p256_verify(
            key, q.qe_report_signature, q.qe_report.raw
        )
        checks.add(
            "qe_report_signature",
            ok,
            "signed by the PCK key" if ok else "does not verify with the PCK leaf key",
        )
    else:
        checks.fail("qe_report_signature", "not checked: no valid PCK certificate")
    _qe_identity(checks, q.qe_report)
    expected = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest() + bytes(32)
    bound = hmac.compare_digest(q.qe_report.report_data, expected)
    checks.add(
        "qe_report_data",
        bound,
        "QE report_data = SHA-256(attestation key ‖ QE auth data) ‖ 0³²"
        if bound
        else "QE report_data does not bind the attestation key and QE auth data",
    )
    att_key = _attestation_key(q.attestation_key)
    signed = att_key is not None and _ecdsa_p256_verify(att_key, q.signature, q.signed)
    checks.add(
        "quote_signature",
        signed,
        "header and TD report signed by the attestation key"
        if signed
        else "does not verify with the attestation key"
        if att_key
        else "attestation key is not a P-256 point",
    )
    return ext


def _qe_identity(checks: ChecksBuilder, qe: quote.SgxReportBody) -> None:
    """Intel's TD QE, not a debug one, whether or not QE Identity collateral is given.

    The PCE certifies any enclave with the provisioning attribute, so without this pin a host
    could run its own quoting enclave and sign any TD report with a genuine PCK chain.
    """
    problems = []
    if not hmac.compare_digest(qe.mrsigner, quote.INTEL_QE_MRSIGNER):
        problems.append(f"MRSIGNER {qe.mrsigner.hex()} is not Intel's")
    if qe.isvprodid != quote.TD_QE_ISVPRODID:
        problems.append(f"ISVPRODID {qe.isvprodid}, expected {quote.TD_QE_ISVPRODID} (TD_QE)")
    if int.from_bytes(qe.attributes, "little") & quote.SGX_ATTRIBUTES_DEBUG:
        problems.append("ATTRIBUTES.DEBUG is set")
    checks.add(
        "qe_enclave",
        not problems,
        "; ".join(problems) if problems else "Intel TD quoting enclave (MRSIGNER, ISVPRODID 2, not debug)",
    )


def _collateral_checks(run: _Run, q: quote.Quote, ext: pck.PckExtensions | None) -> None:
    col = run.trust.collateral
    if not any(name in col for name in coll.REQUIRED):
        required = bool(run.trust.options.get("require_collateral"))
        if required:
            run.checks.fail(
                "collateral", f"TCB not evaluated: no collateral given ({', '.join(coll.REQUIRED)})"
            )
        return
    missing = [name for name in coll.REQUIRED if name not in col]
    if missing:
        run.checks.fail("collateral", f"incomplete: missing {', '.join(missing)}")
        return
    run.checks.ok("collateral", "TCB Info and QE Identity given")
    info = _signed_piece(run, "tcb_info", coll.TCB_INFO, coll.TCB_INFO_CHAIN, coll.parse_tcb_info)
    ident = _signed_piece(
        run, "qe_identity", coll.QE_IDENTITY, coll.QE_IDENTITY_CHAIN, coll.parse_qe_identity
    )
    if info is None or ident is None or ext is None:
        run.checks.fail("tcb_status", "not evaluated: collateral or PCK certificate did not verify")
        return
    run.claims.update(
        {
            "tcb_evaluated": True,
            "tcb_evaluation_data_number": info.evaluation_data_number,
            "qe_identity_evaluation_data_number": ident.evaluation_data_number,
        }
    )
    try:
        verdict = tcb.evaluate(info, ident, ext, q.body, q.qe_report)
    except tcb.TcbEvaluationError as exc:
        run.checks.fail("tcb_evaluation", str(exc))
        run.tcb_status = tcb.NOT_SUPPORTED
        run.claims["tcb_status"] = tcb.NOT_SUPPORTED
        run.checks.fail("tcb_status", f"{tcb.NOT_SUPPORTED}: no TCB status applies")
        return
    run.checks.ok(
        "tcb_evaluation",
        f"platform {verdict.platform_status} (tcbDate {verdict.tcb_date}), QE {verdict.qe_status}, "
        f"TDX module {verdict.module_id} {verdict.module_status or 'n/a'}",
    )
    run.tcb_status, run.advisories = verdict.status, verdict.advisories
    run.claims.update(
        {
            "tcb_status": verdict.status,
            "platform_tcb_status": verdict.platform_status,
            "qe_tcb_status": verdict.qe_status,
            "tdx_module_id": verdict.module_id,
            "tdx_module_tcb_status": verdict.module_status,
            "tcb_date": verdict.tcb_date,
            "advisories": list(verdict.advisories),
        }
    )
    accept = frozenset(run.trust.options.get("accept_tcb") or DEFAULT_ACCEPT)
    ok = verdict.status in accept
    advisories = f"; advisories {', '.join(verdict.advisories)}" if verdict.advisories else ""
    run.checks.add(
        "tcb_status",
        ok,
        f"{verdict.status} (accepted: {', '.join(sorted(accept))}){advisories}",
    )


def _verified_piece(run: _Run, file: str, chain_file: str, parse: Any) -> tuple[Any, str]:
    """A TCB Info or QE Identity, parsed and its signer verified in full on the first call for
    these exact bytes (document, issuer chain, roots, Root CA CRL), then only the validity windows
    of every certificate and CRL involved."""
    col: Mapping[str, bytes] = run.trust.collateral
    key = (
        file,
        _exact(col[file]),
        _exact(col[chain_file]),
        _exact(run.trust.roots.get(ROOT_KEY)),
        _exact(col.get(coll.ROOT_CA_CRL)),
    )
    known = _SIGNED.get(key)
    if known is not None and known.windows.hold_at(run.at):
        return known.value  # type: ignore[no-any-return]
    piece = parse(col[file], file)
    root_crl = load_crl(col[coll.ROOT_CA_CRL], what=coll.ROOT_CA_CRL) if coll.ROOT_CA_CRL in col else None
    roots = _roots(run.trust)
    detail = coll.verify_signer(
        piece.signed, col[chain_file], roots=roots, at=run.at, root_crl=root_crl, what=file
    )
    signers = load_certificates(col[chain_file], what=f"{file} issuer chain")
    windows = memo.Windows.of([*signers, *roots], [root_crl] if root_crl is not None else [])
    _SIGNED.put(key, _Verified((piece, detail), windows))
    return piece, detail


def _signed_piece(run: _Run, name: str, file: str, chain_file: str, parse: Any) -> Any:
    try:
        piece, detail = _verified_piece(run, file, chain_file, parse)
    except (CollateralError, CertsError) as exc:
        run.checks.fail(name, str(exc))
        return None
    run.checks.ok(name, detail)
    fresh, why = coll.freshness(piece.issue_date, piece.next_update, run.at)
    run.checks.add(f"{name}_fresh", fresh, why)
    run.claims[f"{name}_next_update"] = f"{piece.next_update:%Y-%m-%dT%H:%M:%SZ}"
    return piece
