"""A new leaf under an issuer path OpenSSL already validated: accepted only where OpenSSL would accept.

`verify_chain` (certs/chain.py) remembers, for every success, the issuer path OpenSSL built
(the certificates above the leaf) under the exact DER of the intermediates, roots and CRLs and
the CRL mode. A leaf never seen before under that same path (a new platform's PCK certificate,
a new chip's VCEK) is then checked here, with pyca `cryptography`, against conditions that are
each at least as strict as OpenSSL's for a leaf whose issuers it already accepted:

- every window of the remembered path and CRLs, and the leaf's own, holds at `at`
  (whole seconds, as OpenSSL's store sees it);
- the leaf's issuer name is byte-for-byte the issuer's subject, no other given certificate
  carries that name (so OpenSSL's path building could pick no other issuer), and the leaf is
  not self-issued;
- the leaf has no authority key identifier (an AMD VCEK; OpenSSL then goes by the name, which
  only the issuer carries), or one that is a key identifier equal to the issuer's subject key
  identifier, with no issuer/serial form;
- the issuer's key verifies the leaf's signature;
- the leaf is not a CA, and carries only extensions OpenSSL handles the same way whatever the
  issuer: critical ones among basicConstraints and keyUsage; standard ones that cryptography
  parsed strictly at load; vendor ones (Intel SGX, AMD) non-critical;
- with CRLs: exactly one CRL given names the leaf's issuer, it has no extensions that scope it
  (issuing distribution point, delta), the leaf's distribution points name no reasons and no
  CRL issuer, and the leaf's serial is not among its revoked serials.

Anything else returns None, and OpenSSL decides in full, with its own reason: this path never
rejects, so a rejection always comes from OpenSSL and a doubt never turns into an acceptance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from certs import memo

_CRITICAL_OK = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})
_STANDARD_OK = _CRITICAL_OK | {
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER,
    ExtensionOID.CRL_DISTRIBUTION_POINTS,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
}
VENDOR_ARCS = ("1.2.840.113741.", "1.3.6.1.4.1.3704.")
"""Intel (SGX extensions of a PCK certificate) and AMD (VCEK/VLEK TCB extensions): OpenSSL
ignores these non-critical extensions, so they cannot change its verdict."""

_ISSUER_PATH_UNSUPPORTED = frozenset(
    {
        ExtensionOID.NAME_CONSTRAINTS,
        ExtensionOID.POLICY_CONSTRAINTS,
        ExtensionOID.POLICY_MAPPINGS,
        ExtensionOID.INHIBIT_ANY_POLICY,
    }
)
_CRL_EXTENSIONS_OK = frozenset({ExtensionOID.CRL_NUMBER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER})


def _name(name: x509.Name) -> bytes:
    return name.public_bytes()


def _extensions_ok(leaf: x509.Certificate) -> bool:
    for ext in leaf.extensions:
        if ext.oid in _STANDARD_OK:
            if ext.critical and ext.oid not in _CRITICAL_OK:
                return False
        elif ext.critical or not ext.oid.dotted_string.startswith(VENDOR_ARCS):
            return False
    try:
        ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    return not ca


def _key_identifier_is(leaf: x509.Certificate, skid: bytes | None) -> bool:
    """No authority key identifier (OpenSSL then matches by name alone, as here), or a key
    identifier equal to the issuer's subject key identifier and no issuer/serial form."""
    try:
        akid = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True
    return (
        skid is not None
        and akid.key_identifier == skid
        and akid.authority_cert_issuer is None
        and akid.authority_cert_serial_number is None
    )


def _signed_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class IssuerPath:
    """An issuer path OpenSSL validated, with what every new leaf under it is compared to,
    derived once from the exact inputs it was validated with."""

    path: tuple[x509.Certificate, ...]
    windows: memo.Windows
    issuer_name: bytes
    issuer_skid: bytes | None
    name_clash: bool
    crl: x509.CertificateRevocationList | None
    check_crl: bool

    @classmethod
    def of(
        cls,
        path: Sequence[x509.Certificate],
        *,
        given: Sequence[x509.Certificate],
        crls: Sequence[x509.CertificateRevocationList],
        check_crl: bool,
        der: Callable[[x509.Certificate], bytes],
    ) -> IssuerPath | None:
        """None where the path cannot serve new leaves here (it constrains names or policies)."""
        if not path or any(e.oid in _ISSUER_PATH_UNSUPPORTED for c in path for e in c.extensions):
            return None
        issuer = path[0]
        name = _name(issuer.subject)
        try:
            skid: bytes | None = issuer.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value.digest
        except x509.ExtensionNotFound:
            skid = None
        matching = [c for c in crls if _name(c.issuer) == name]
        unscoped = len(matching) == 1 and all(e.oid in _CRL_EXTENSIONS_OK for e in matching[0].extensions)
        return cls(
            path=tuple(path),
            windows=memo.Windows.of(path, crls),
            issuer_name=name,
            issuer_skid=skid,
            name_clash=any(_name(c.subject) == name and der(c) != der(issuer) for c in given),
            crl=matching[0] if unscoped else None,
            check_crl=check_crl,
        )


def _crl_applies_whole(leaf: x509.Certificate) -> bool:
    """The leaf's distribution points (if any) name no reasons and no CRL issuer: one full CRL
    from its issuer covers it, as OpenSSL's scope check has it."""
    try:
        points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return True
    return all(p.reasons is None and p.crl_issuer is None for p in points)


def accepted(leaf: x509.Certificate, issuers: IssuerPath, at: dt.datetime) -> bool:
    """True only where OpenSSL, given the inputs `issuers` was validated with and `leaf`,
    accepts `leaf` at `at` with that path above it; False also where the leaf cannot be read
    (cryptography parses lazily: a certificate not loaded through certs/chain.py may still hold
    a malformed extension). Serial warnings are the caller's."""
    try:
        return _accepted(leaf, issuers, at)
    except (ValueError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return False


def _accepted(leaf: x509.Certificate, issuers: IssuerPath, at: dt.datetime) -> bool:
    if issuers.name_clash or not (issuers.windows.hold_at(at) and memo.Windows.of([leaf]).hold_at(at)):
        return False
    issuer_name = _name(leaf.issuer)
    if issuer_name != issuers.issuer_name or issuer_name == _name(leaf.subject):
        return False
    if not (_extensions_ok(leaf) and _key_identifier_is(leaf, issuers.issuer_skid)):
        return False
    if not _signed_by(leaf, issuers.path[0]):
        return False
    if not issuers.check_crl:
        return True
    return issuers.crl is not None and _crl_applies_whole(leaf) and not_revoked(leaf, issuers.crl)


def not_revoked(leaf: x509.Certificate, crl: x509.CertificateRevocationList) -> bool:
    return crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is None
