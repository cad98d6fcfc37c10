"""Self-issued and CA-issued CVM certificates share one profile (grants need keyAgreement)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certs.profile import cvm_leaf
from certs.selfissue import self_issue

NOW = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


def _usage(cert: x509.Certificate) -> x509.KeyUsage:
    return cert.extensions.get_extension_for_class(x509.KeyUsage).value


def test_self_issued_ec_key_may_sign_and_agree_but_is_no_ca() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = self_issue(key, common_name="t", bundle={"nonce": b"", "evidence": [], "claims": {}}, now=NOW)
    usage = _usage(cert)
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_ed25519_key_gets_no_key_agreement() -> None:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    leaf = ed25519.Ed25519PrivateKey.generate().public_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(leaf)
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
    )
    usage = _usage(cvm_leaf(builder, leaf).sign(ca_key, hashes.SHA384()))
    assert usage.digital_signature and not usage.key_agreement
