"""Self-issued certificate for offline mode: the ephemeral key vouches for itself, and the
hardware evidence inside the certificate (bound to this key by report_data) is the trust."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certs.extensions import encode_evidence_extension
from certs.profile import cvm_leaf


def self_issue(
    key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    bundle: dict[str, Any],
    now: dt.datetime,
    lifetime: dt.timedelta = dt.timedelta(days=1),
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trusted-loader (self-issued)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
    )
    builder = cvm_leaf(builder, public).add_extension(encode_evidence_extension(bundle), critical=False)
    return builder.sign(key, hashes.SHA384())
