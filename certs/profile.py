"""The certificate profile of a CVM key, shared by the self-issued and the CA-issued certificate."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes


def cvm_leaf(
    builder: x509.CertificateBuilder, public_key: CertificatePublicKeyTypes
) -> x509.CertificateBuilder:
    """An end entity whose key signs reports and, when it is an EC key, agrees keys with data
    owners (grants wrap dataset keys to it: loader/parties/grants.py)."""
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
