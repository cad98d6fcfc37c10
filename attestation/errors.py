"""Exceptions of the attestation package.

Every error a parser, attester or verifier raises derives from AttestationError, so callers
(the loader, the CA, the CLI) catch one type and show its one-line message.
"""


class AttestationError(Exception):
    """Base of all attestation errors."""


class EvidenceFormatError(AttestationError):
    """Evidence bytes are malformed: short, trailing, out-of-range or unknown fields."""


class VerificationError(AttestationError):
    """A cryptographic or policy check on evidence failed."""


class AttesterUnavailable(AttestationError):
    """The requested TEE interface is not present or not usable on this machine."""


class AttesterFailure(AttestationError):
    """The TEE interface is present but producing evidence failed."""


class CollateralError(AttestationError):
    """Vendor collateral (TCB info, identities, CRLs) is malformed or cannot be trusted."""


ASN1_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    OverflowError,
)
"""What asn1crypto's lazy parsing raises on malformed DER (it is not limited to ValueError)."""
