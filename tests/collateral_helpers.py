"""SYNTHETIC collateral for the tests (never real vendor data): CRLs signed by test keys."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def synthetic_crl(issuer_cn: str, *, days: int = 30000) -> bytes:
    """A DER CRL naming `issuer_cn` as issuer but signed by a fresh test key: SYNTHETIC."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA384())
    )
    return crl.public_bytes(serialization.Encoding.DER)
