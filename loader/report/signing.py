"""The parties' detached signatures over the exact bytes of an approved list.

Envelope: COSE_Sign1 (RFC 9052 §4.2) with a detached payload (nil); the payload is the
approved-list file byte for byte, so a signature covers exactly what the loader parses and what
the report's `policy.digest` names. COSE rather than DSSE because the integrity report is
already COSE: one strict codec (loader/report/cose.py), CBOR throughout, detached payloads native.

Protected header (deterministic CBOR map; nothing unprotected):
  1  alg   -35 (ES384, key P-384, signature r ‖ s, 96 bytes) or -8 (EdDSA, Ed25519, 64 bytes)
  2  crit  [15]: a verifier that cannot read the expiry must not accept the signature
  3  content type  "application/vnd.trusted-loader.policy+json"
  4  kid   SHA-256 of the signer's SubjectPublicKeyInfo DER (32 bytes)
  15 CWT claims (RFC 9597): {6: iat, 4: exp}, NumericDate integers (seconds since 1970 UTC)

The loader's configuration names the trusted signers (name -> public key) and which of them
are required. `check_signatures` is the one judgement, shared by the loader and `report verify`
(which re-runs it on the envelopes and keys embedded in the report, at the report's start
time). Every problem is a reason naming the signature file and, where known, the signer:
malformed envelopes, signatures by keys not in the signer list ("extra"), two signatures by
one signer, wrong algorithm, bad signatures, not-yet-valid or expired ones, and each required
signer without a valid signature ("missing").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from loader.errors import ReportError, TrustError
from loader.report import cose
from loader.report.partykeys import PrivateKey, PublicKey, key_id, key_id_text

CONTENT_TYPE = "application/vnd.trusted-loader.policy+json"
CLAIM_EXP = 4
CLAIM_IAT = 6
MAX_SIGNATURE_BYTES = 4096
MAX_SIGNATURES = 32
CLOCK_SKEW = dt.timedelta(minutes=5)
_HEADERS = {cose.HDR_ALG, cose.HDR_CRIT, cose.HDR_CONTENT_TYPE, cose.HDR_KID, cose.HDR_CWT_CLAIMS}


@dataclass(frozen=True)
class PolicySignature:
    """A parsed (not yet verified) signature envelope."""

    envelope: cose.Sign1
    alg: int
    kid: bytes
    issued: int
    expires: int


@dataclass(frozen=True)
class SignatureCheck:
    verified: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons


def _alg_for(key: PrivateKey | PublicKey) -> int:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return cose.ALG_ES384
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return cose.ALG_EDDSA
    raise TrustError(f"a {type(key).__name__} cannot sign; use a P-384 or Ed25519 key")


def sign_policy(document: bytes, key: PrivateKey, *, issued: dt.datetime, expires: dt.datetime) -> bytes:
    """A detached COSE_Sign1 over `document` (the approved list's exact bytes)."""
    alg = _alg_for(key)
    if expires <= issued:
        raise TrustError("the signature's expiry must be later than its issue time")
    protected = {
        cose.HDR_ALG: alg,
        cose.HDR_CRIT: [cose.HDR_CWT_CLAIMS],
        cose.HDR_CONTENT_TYPE: CONTENT_TYPE,
        cose.HDR_KID: key_id(key.public_key()),
        cose.HDR_CWT_CLAIMS: {CLAIM_IAT: int(issued.timestamp()), CLAIM_EXP: int(expires.timestamp())},
    }

    def sign(data: bytes) -> bytes:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA384())))
            return r.to_bytes(48, "big") + s.to_bytes(48, "big")
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key.sign(data)

    return cose.encode_sign1_detached(protected, document, sign)


def parse_signature(data: bytes, what: str) -> PolicySignature:
    """Decode one envelope and check its header; raises TrustError naming `what`."""
    try:
        env = cose.decode_sign1_detached(data, what, MAX_SIGNATURE_BYTES)
    except ReportError as exc:
        raise TrustError(str(exc)) from None
    hdr = env.protected
    if cbor2.dumps(hdr, canonical=True) != env.protected_raw:
        raise TrustError(f"{what}: protected header is not in deterministic CBOR encoding")
    unknown = set(hdr) - _HEADERS
    if unknown:
        raise TrustError(f"{what}: unknown protected header parameter {sorted(unknown, key=str)[0]!r}")
    alg = hdr.get(cose.HDR_ALG)
    if alg not in (cose.ALG_ES384, cose.ALG_EDDSA):
        raise TrustError(f"{what}: alg must be ES384 (-35) or EdDSA (-8), found {alg!r}")
    if hdr.get(cose.HDR_CRIT) != [cose.HDR_CWT_CLAIMS]:
        raise TrustError(f"{what}: crit must be [15] (the CWT claims with the expiry)")
    if hdr.get(cose.HDR_CONTENT_TYPE) != CONTENT_TYPE:
        raise TrustError(f"{what}: content type must be {CONTENT_TYPE!r}, found {hdr.get(3)!r}")
    kid = hdr.get(cose.HDR_KID)
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise TrustError(f"{what}: kid must be the 32-byte SHA-256 of the signer's public key")
    claims = hdr.get(cose.HDR_CWT_CLAIMS)
    if not isinstance(claims, dict) or set(claims) != {CLAIM_IAT, CLAIM_EXP}:
        raise TrustError(f"{what}: CWT claims (15) must hold exactly iat (6) and exp (4)")
    iat, exp = claims[CLAIM_IAT], claims[CLAIM_EXP]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40 for v in (iat, exp)):
        raise TrustError(f"{what}: iat and exp must be integer seconds since 1970")
    size = 96 if alg == cose.ALG_ES384 else 64
    if len(env.signature) != size:
        raise TrustError(f"{what}: signature must be {size} bytes for alg {alg}, found {len(env.signature)}")
    return PolicySignature(env, alg, kid, iat, exp)


def _verifies(sig: PolicySignature, key: PublicKey, document: bytes) -> bool:
    data = cose.detached_sig_structure(sig.envelope.protected_raw, document)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            raw = sig.envelope.signature
            der = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))
            key.verify(der, data, ec.ECDSA(hashes.SHA384()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig.envelope.signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _when(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_signatures(
    document: bytes,
    envelopes: Sequence[tuple[str, bytes]],
    signers: Mapping[str, PublicKey],
    required: Sequence[str],
    at: dt.datetime,
) -> SignatureCheck:
    """Judge the (label, envelope bytes) pairs over `document`; list every problem."""
    reasons: list[str] = []
    verified: list[str] = []
    by_kid = {key_id(k): name for name, k in signers.items()}
    digest = "sha256:" + hashlib.sha256(document).hexdigest()
    now = int(at.timestamp())
    if len(envelopes) > MAX_SIGNATURES:
        reasons.append(f"policy signatures: {len(envelopes)} given, more than the {MAX_SIGNATURES} allowed")
        envelopes = envelopes[:MAX_SIGNATURES]
    for label, data in envelopes:
        what = f"policy signature {label}"
        try:
            sig = parse_signature(data, what)
        except TrustError as exc:
            reasons.append(str(exc))
            continue
        name = next((n for kid, n in by_kid.items() if hmac.compare_digest(kid, sig.kid)), None)
        if name is None:
            reasons.append(f"{what}: signed by key sha256:{sig.kid.hex()}, which is not a trusted signer")
            continue
        key = signers[name]
        if sig.alg != _alg_for(key):
            reasons.append(f"{what}: signer {name!r}: alg {sig.alg} does not fit its {type(key).__name__}")
        elif not _verifies(sig, key, document):
            reasons.append(f"{what}: signer {name!r}: signature does not verify over {digest}")
        elif now + CLOCK_SKEW.total_seconds() < sig.issued:
            reasons.append(f"{what}: signer {name!r}: signature not valid before {_when(sig.issued)}")
        elif now > sig.expires:
            reasons.append(f"{what}: signer {name!r}: signature expired at {_when(sig.expires)}")
        elif name in verified:
            reasons.append(f"{what}: signer {name!r} signed twice")
        else:
            verified.append(name)
    for name in required:
        if name not in signers:
            reasons.append(f"policy signature: required signer {name!r} is not a trusted signer")
        elif name not in verified:
            kid = key_id_text(signers[name])
            reasons.append(f"policy signature: required signer {name!r} ({kid}) has no valid signature")
    return SignatureCheck(tuple(verified), tuple(reasons))
