"""Verifier of SEV-SNP attestation reports.

Steps, each a named check: format, signature_algo, signing_key, certificate (VCEK or VLEK as
the report's SIGNING_KEY says), product (from the certificate, the report's CPUID fields and
the caller; all that are present must agree), report_signature (ECDSA P-384 / SHA-384 over
bytes 0x000-0x29F, r and s little-endian), chain (VCEK/VLEK -> ASK/ASVK -> the product's ARK
at time `at`, through OpenSSL), chain_algorithms (RSASSA-PSS with SHA-384), crl (the ARK's
CRL over the ASK/ASVK, when given), hwid (VCEK hwID = CHIP_ID), tcb (certificate SPLs =
REPORTED_TCB), report_data; then validation against an SnpPolicy (validate.py).

Inputs beside the report, first found wins:
  signing certificate: trust.collateral["vcek"|"vlek"], evidence.aux["vcek"|"vlek"]
                       (collateral["vcek"] also serves a VLEK: it is the CLI's --vcek);
  ASK/ASVK bundle:     trust.collateral["chain"], evidence.aux["chain"], else the bundled one;
  trust anchors:       trust.roots["ark"] (PEM bundle), else the bundled ARK of the product;
  CRL:                 trust.collateral["crl"] (DER or PEM, issued by the ARK);
  trust.options:       "product" (milan|genoa|turin), "policy" (SnpPolicy or a mapping).
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import SignatureAlgorithmOID

from attestation.errors import AttestationError
from attestation.evidence import ChecksBuilder, Evidence, Result, Trust
from attestation.sevsnp import products, report, roots, vcek
from attestation.sevsnp.products import Product
from attestation.sevsnp.report import AttestationReport
from attestation.sevsnp.validate import SnpPolicy, validate
from attestation.sevsnp.vcek import one_line
from certs.chain import describe, fingerprint, load_certificates, load_crl, verify_chain
from certs.errors import CertsError

TYPE = "sev-snp"


@dataclass
class _State:
    """What the steps learn, for the steps after them."""

    rep: AttestationReport
    trust: Trust
    evidence: Evidence
    at: dt.datetime
    checks: ChecksBuilder = field(default_factory=ChecksBuilder)
    claims: dict[str, Any] = field(default_factory=dict)
    cert: x509.Certificate | None = None
    info: vcek.KeyCertInfo | None = None
    product: Product | None = None
    chain: list[x509.Certificate] = field(default_factory=list)


class SnpVerifier:
    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes | None,
        trust: Trust,
        at: dt.datetime,
    ) -> Result:
        checks = ChecksBuilder()
        if evidence.type != TYPE:
            checks.fail("format", f"expected evidence type {TYPE!r}, found {evidence.type!r}")
            return Result(TYPE, checks.build(), {})
        try:
            rep = report.parse(evidence.data)
        except AttestationError as exc:
            checks.fail("format", one_line(exc))
            return Result(TYPE, checks.build(), {})
        st = _State(rep, trust, evidence, at, checks)
        checks.ok("format", f"ATTESTATION_REPORT version {rep.version}, {report.REPORT_SIZE} bytes")
        policy, flag = _options(st)
        _signature_algo(st)
        if _signing_key(st) and _certificate(st):
            _product(st, flag)
            _report_signature(st)
            if st.product is not None and _chain(st):
                _chain_algorithms(st)
                _crl(st)
            _hwid(st)
            _tcb(st)
        else:
            _product(st, flag)
        if expected_report_data is not None:
            same = hmac.compare_digest(rep.report_data, expected_report_data)
            checks.add(
                "report_data",
                same,
                "matches the expected binding"
                if same
                else f"expected {expected_report_data.hex()[:32]}…, found {rep.report_data.hex()[:32]}…",
            )
        if policy is not None:
            validate(rep, st.product, policy, checks)
        claims = {**rep.to_json(st.product), **st.claims}
        return Result(TYPE, checks.build(), claims, report_data=rep.report_data)


def _options(st: _State) -> tuple[SnpPolicy | None, Product | None]:
    """The policy and product flag from trust.options; a bad option is a failed check."""
    opts = st.trust.options
    try:
        raw = opts.get("policy")
        policy = raw if isinstance(raw, SnpPolicy) else SnpPolicy.from_mapping(raw or {})
        flag = products.parse(str(opts["product"])) if opts.get("product") else None
    except AttestationError as exc:
        st.checks.fail("options", one_line(exc))
        return None, None
    return policy, flag


def _signature_algo(st: _State) -> None:
    algo = st.rep.signature_algo
    st.checks.add(
        "signature_algo",
        algo == report.SIGNATURE_ALGO_ECDSA_P384_SHA384,
        f"expected 1 (ECDSA P-384 with SHA-384), found {algo}"
        if algo != report.SIGNATURE_ALGO_ECDSA_P384_SHA384
        else "ECDSA P-384 with SHA-384",
    )


def _signing_key(st: _State) -> bool:
    rep = st.rep
    if rep.mask_chip_key:
        st.checks.fail("signing_key", "MASK_CHIP_KEY is set: the firmware did not sign this report")
        return False
    name = rep.signing_key_name
    return st.checks.add(
        "signing_key",
        name in ("vcek", "vlek"),
        f"signed with the {name.upper()}" if name in ("vcek", "vlek") else f"SIGNING_KEY is {name}: unsigned",
    )


def _certificate(st: _State) -> bool:
    kind = st.rep.signing_key_name
    sources: list[tuple[str, Mapping[str, bytes], str]] = [("collateral", st.trust.collateral, kind)]
    if kind == "vlek":
        sources.append(("collateral", st.trust.collateral, "vcek"))
    sources.append(("evidence aux", st.evidence.aux, kind))
    found = next(((f"{where}[{key!r}]", m[key]) for where, m, key in sources if m.get(key)), None)
    if found is None:
        st.checks.fail("certificate", f"no {kind.upper()} certificate given (collateral or evidence)")
        return False
    where, blob = found
    try:
        certs = load_certificates(blob, what=f"{kind.upper()} from {where}")
        if len(certs) != 1:
            raise AttestationError(f"{where}: expected one certificate, found {len(certs)}")
        cert = certs[0]
        info = vcek.parse(cert.public_bytes(serialization.Encoding.DER), what=kind.upper())
    except (AttestationError, CertsError) as exc:
        st.checks.fail("certificate", one_line(exc))
        return False
    key = cert.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)):
        st.checks.fail("certificate", f"{where}: expected an ECDSA P-384 key, found {type(key).__name__}")
        return False
    if info.kind != kind:
        st.checks.fail(
            "certificate", f"report is signed by the {kind.upper()}, but {where} is {info.subject_cn!r}"
        )
        return False
    st.cert, st.info = cert, info
    st.claims["signing_cert"] = {
        "kind": kind,
        "subject": describe(cert),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": fingerprint(cert),
        "product_name": info.product_name,
        "spls": info.spls,
        **({"csp_id": info.csp_id} if info.csp_id else {}),
    }
    st.checks.ok("certificate", f"{info.subject_cn} issued by {info.issuer_cn} ({where})")
    return True


def _product(st: _State, flag: Product | None) -> None:
    seen: dict[str, Product] = {}
    if st.info is not None:
        if st.info.product is not None:
            seen["certificate productName"] = st.info.product
        by_issuer = products.from_issuer_cn(st.info.issuer_cn)
        if by_issuer is not None:
            seen["certificate issuer"] = by_issuer
    if st.rep.cpuid is not None:
        by_cpuid = products.from_cpuid(st.rep.cpuid[0], st.rep.cpuid[1])
        if by_cpuid is not None:
            seen["report CPUID"] = by_cpuid
    if flag is not None:
        seen["product option"] = flag
    if not seen:
        st.checks.fail("product", "cannot tell Milan, Genoa or Turin apart: give the product explicitly")
        return
    if len(set(seen.values())) > 1:
        st.checks.fail("product", "sources disagree: " + ", ".join(f"{k} {v.value}" for k, v in seen.items()))
        return
    st.product = next(iter(seen.values()))
    st.claims["product"] = st.product.value
    if st.info is not None and st.info.stepping:
        st.claims["stepping"] = st.info.stepping
    st.checks.ok("product", f"{st.product.value} (from {', '.join(seen)})")


def _report_signature(st: _State) -> None:
    assert st.cert is not None
    rep = st.rep
    signature = encode_dss_signature(rep.signature_r, rep.signature_s)
    key = st.cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(signature, rep.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        st.checks.fail(
            "report_signature",
            f"signature over bytes 0x000-0x29F does not verify with the {rep.signing_key_name.upper()} key",
        )
        return
    st.checks.ok(
        "report_signature", f"ECDSA P-384 signature verifies with the {rep.signing_key_name.upper()}"
    )


def _bundle(st: _State) -> tuple[list[x509.Certificate], str]:
    for where, mapping in (("collateral", st.trust.collateral), ("evidence aux", st.evidence.aux)):
        if mapping.get("chain"):
            return load_certificates(mapping["chain"], what=f"{where}['chain']"), f"{where} chain"
    assert st.product is not None
    return list(roots.bundled_chain(st.product, st.rep.signing_key_name)), "bundled AMD chain"


def _anchors(st: _State) -> tuple[list[x509.Certificate], str]:
    if st.trust.roots.get("ark"):
        return load_certificates(st.trust.roots["ark"], what="trust roots['ark']"), "given ARK"
    assert st.product is not None
    return [roots.bundled_ark(st.product)], f"bundled ARK-{st.product.value}"


def _chain(st: _State) -> bool:
    assert st.cert is not None and st.product is not None
    kind = st.rep.signing_key_name
    try:
        bundle, bundle_src = _bundle(st)
        anchors, anchor_src = _anchors(st)
        pins = {fingerprint(a) for a in anchors}
        # Self-signed certificates in the bundle are never anchors: only `anchors` are.
        intermediates = [c for c in bundle if c.subject != c.issuer and fingerprint(c) not in pins]
        chain = verify_chain(st.cert, intermediates=intermediates, roots=anchors, at=st.at)
    except (CertsError, AttestationError) as exc:
        reason = one_line(exc)
        st.checks.fail("chain", f"{kind.upper()} does not chain to the {st.product.value} ARK: {reason}")
        return False
    want_ask = f"SEV-VLEK-{st.product.value}" if kind == "vlek" else f"SEV-{st.product.value}"
    ask_cn = _cn(chain[1]) if len(chain) == 3 else ""
    if len(chain) != 3 or ask_cn != want_ask:
        path = " -> ".join(_cn(c) for c in chain)
        st.checks.fail("chain", f"expected {kind.upper()} -> {want_ask} -> ARK, found {path}")
        return False
    st.chain = chain
    st.claims["chain"] = [{"subject": describe(c), "sha256": fingerprint(c)} for c in chain]
    st.checks.ok(
        "chain",
        f"{_cn(chain[0])} -> {_cn(chain[1])} -> {_cn(chain[2])} (sha256 {fingerprint(chain[2])[:16]}…) "
        f"valid at {st.at.isoformat()}; intermediates from the {bundle_src}, anchor the {anchor_src}",
    )
    return True


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else describe(cert)


def _chain_algorithms(st: _State) -> None:
    bad = []
    for cert in st.chain:
        try:
            hash_alg = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            hash_alg = None
        if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
            hash_alg, hashes.SHA384
        ):
            bad.append(f"{_cn(cert)} signed with {cert.signature_algorithm_oid.dotted_string}")
    st.checks.add(
        "chain_algorithms",
        not bad,
        "; ".join(bad) + " (AMD signs with RSASSA-PSS SHA-384)"
        if bad
        else "RSASSA-PSS with SHA-384 throughout",
    )


def _crl(st: _State) -> None:
    blob = st.trust.collateral.get("crl")
    if not blob:
        st.claims["crl_checked"] = False
        return
    ask, ark = st.chain[1], st.chain[2]
    try:
        crl = load_crl(blob, what="CRL")
        verify_chain(ask, roots=[ark], at=st.at, crls=[crl], crl_mode="leaf")
    except CertsError as exc:
        st.checks.fail("crl", f"{_cn(ask)} against the CRL of {_cn(ark)}: {one_line(exc)}")
        return
    st.claims["crl_checked"] = True
    st.checks.ok("crl", f"{_cn(ask)} not revoked by {_cn(ark)}'s CRL (next update {crl.next_update_utc})")


def _hwid(st: _State) -> None:
    assert st.info is not None
    chip_id = st.rep.chip_id
    if st.info.kind == "vlek":
        st.checks.ok("hwid", "not applicable: a VLEK is issued to a cloud provider, not to one chip")
        return
    hwid = st.info.hwid
    if hwid is None:
        st.checks.fail("hwid", "VCEK has no hwID extension (1.3.6.1.4.1.3704.1.4)")
        return
    if not any(chip_id):
        st.checks.fail("hwid", "CHIP_ID is all zero (MASK_CHIP_ID): cannot tie the report to the VCEK")
        return
    # Turin VCEKs carry the 8-byte chip ID; the report's CHIP_ID is then zero beyond it.
    expected = hwid + bytes(len(chip_id) - len(hwid)) if len(hwid) <= len(chip_id) else hwid
    same = hmac.compare_digest(chip_id, expected)
    st.checks.add(
        "hwid",
        same,
        "VCEK hwID equals CHIP_ID"
        if same
        else f"VCEK hwID {hwid.hex()[:32]}… != CHIP_ID {chip_id.hex()[:32]}…",
    )


def _tcb(st: _State) -> None:
    assert st.info is not None
    if st.product is None:
        st.checks.fail("tcb", "cannot decode REPORTED_TCB: the product is unknown")
        return
    tcb = st.rep.tcb("reported_tcb", st.product)
    if tcb.reserved_nonzero:
        st.checks.fail("tcb", f"REPORTED_TCB 0x{tcb.raw:016x} has non-zero reserved bytes")
        return
    diffs = [
        f"{name}: certificate {st.info.spls.get(name, 'missing')}, report {value}"
        for name, value in tcb.parts().items()
        if st.info.spls.get(name) != value
    ]
    st.checks.add(
        "tcb",
        not diffs,
        "; ".join(diffs) if diffs else f"certificate SPLs equal REPORTED_TCB ({tcb})",
    )
