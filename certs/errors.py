"""Exceptions of the certs package (one hierarchy; messages are one line)."""


class CertsError(Exception):
    """Base of all certs errors."""


class CertificateFormatError(CertsError):
    """Bytes that should hold certificates or CRLs do not parse."""


class ChainError(CertsError):
    """A certificate chain does not validate to the given trust anchors."""
