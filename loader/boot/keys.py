"""The ephemeral signing key: created in memory at boot, never serialised, dropped at the end.

Python cannot promise to zero the key's memory (OpenSSL owns it); dropping the last reference
frees it, and nothing here ever writes it anywhere.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

COORD = 48


class EphemeralKey:
    def __init__(self) -> None:
        self._key: ec.EllipticCurvePrivateKey | None = ec.generate_private_key(ec.SECP384R1())
        self.public = self._key.public_key()
        self.spki = self.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def private(self) -> ec.EllipticCurvePrivateKey:
        if self._key is None:
            raise RuntimeError("ephemeral key already discarded")
        return self._key

    def sign_raw(self, data: bytes) -> bytes:
        """ES384 signature as COSE wants it: r ‖ s, 48 bytes each."""
        r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(COORD, "big") + s.to_bytes(COORD, "big")

    def discard(self) -> None:
        self._key = None

    def __repr__(self) -> str:
        return "EphemeralKey(<private, in memory>)"

    def __reduce__(self) -> object:
        raise TypeError("the ephemeral key cannot be pickled or copied")
