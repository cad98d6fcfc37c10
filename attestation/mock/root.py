"""The mock root key: derived from a published seed, deliberately not secret."""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives.asymmetric import ec

SEED = b"trusted-loader mock TEE root -- NOT A SECRET, NOT HARDWARE -- v1"
P384_ORDER = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
)


@functools.cache
def private_key() -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha512(SEED).digest(), "big") % (P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


def public_key() -> ec.EllipticCurvePublicKey:
    return private_key().public_key()
