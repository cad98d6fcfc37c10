"""PKCS#10 requests: parse, check the proof of possession, extract the key.

Only the public key of a request is used. Its subject, attributes and requested extensions
are ignored: the CA names the certificate after the key and sets every extension itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certs.errors import CertsError

MAX_CSR_BYTES = 64 << 10
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class CsrError(CertsError):
    """The certificate request is malformed, unsigned or uses an unsupported key."""


@dataclass(frozen=True)
class ParsedCsr:
    csr: x509.CertificateSigningRequest
    public_key: PublicKey
    spki_der: bytes


def parse_csr(data: bytes) -> ParsedCsr:
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"csr: {len(data)} bytes, more than the {MAX_CSR_BYTES} allowed")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        key = csr.public_key()
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        raise CsrError(f"csr: not a PKCS#10 request in PEM or DER ({exc})") from exc
    _require_plain_signature_bits(csr.public_bytes(serialization.Encoding.DER))
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise CsrError(f"csr: EC curve {key.curve.name} not accepted; expected P-256, P-384 or P-521")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CsrError(f"csr: key type {type(key).__name__} not accepted; expected ECDSA or Ed25519")
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # an unsupported signature algorithm surfaces here
        raise CsrError(f"csr: signature cannot be checked ({exc})") from exc
    if not valid:
        raise CsrError("csr: signature does not verify with the request's own public key")
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ParsedCsr(csr=csr, public_key=key, spki_der=spki)


def _require_plain_signature_bits(der: bytes) -> None:
    """Refuse a signature BIT STRING with unused bits (DER allows none for signatures).

    OpenSSL ignores the count, so without this check the request has malleable encodings that
    all "verify"; harmless for the key, but a strict parser accepts exactly one encoding.
    """
    try:
        signature = asn1_csr.CertificationRequest.load(der, strict=True)["signature"]
        unused = signature.contents[0] if signature.contents else 1
    except (ValueError, TypeError) as exc:
        raise CsrError(f"csr: not DER ({exc})") from exc
    if unused != 0:
        raise CsrError(f"csr: signature BIT STRING declares {unused} unused bits, expected 0")


def build_csr(private_key: ec.EllipticCurvePrivateKey, common_name: str = "trusted-loader CVM") -> bytes:
    """A PEM CSR for `private_key` (what the loader sends)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    )
    return builder.sign(private_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)
