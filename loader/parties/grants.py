"""Encrypted datasets and data-access grants.

The timing problem: a grant must be encrypted to the CVM's key, but that key is ephemeral and
created at boot. So, as key-release systems do (a wrapped data key released to an attested
key), a dataset is protected in two steps:

1. Ahead of time, the owner encrypts the dataset with a fresh random 256-bit data key (DEK):
   `trusted-loader dataset encrypt` writes the encrypted file (loader/parties/stream.py format, header
   {"format": "trusted-loader/dataset/v1", "dataset": NAME, "kind": "file"|"directory"}; a
   directory travels as a deterministic tar, loader/parties/archive.py), a key file the owner keeps,
   and prints the *plaintext* digest, which is what goes in the approved list.
2. The loader boots, publishes its attested certificate (`[grants] cert_out`) and waits, bounded,
   for grants in `[grants] dir`. The owner verifies the certificate's evidence
   (loader/parties/cvmcert.py) and wraps the DEK to the certificate's P-384 key with
   `trusted-loader grant create`, naming the exact approved list (by digest) it consents to:
   that list names the engine, how it runs, the datasets, the order and the output recipient.

Grant (deterministic CBOR map): format "trusted-loader/grant/v2", dataset, policy (sha256:<hex>
of the approved list's exact bytes), cvm (SHA-256 of the CVM key's SubjectPublicKeyInfo DER),
epk (the owner's ephemeral P-384 SubjectPublicKeyInfo DER), nonce (12 bytes), wrapped
(AES-256-GCM of the DEK, 48 bytes). ECDH(epk, CVM key) -> HKDF-SHA384(info =
"trusted-loader/grant/v2\\0" ‖ CBOR[dataset, policy, cvm, epk]) -> 32-byte key-encryption key;
the AEAD's associated data is the grant map without `wrapped`. The loader checks each named
field against its own values first (to name the mismatch), then unwraps with the KDF info and
AAD rebuilt from its own values, so a grant for another approved list, dataset or CVM cannot
open even if a check were missed. (v1 grants named only the engine and order: a list changing
how the engine runs, or where its output goes, could use them. They are refused.)
The CVM's attested key is an ECDSA key; using it for ECDH too is a deliberate reuse
(its certificate has keyAgreement set) so that the grant is bound to exactly the attested key.

What is measured: the approved list names the plaintext digest of each encrypted dataset, the
digest an owner computes on their own copy (`trusted-loader digest`) and can replay against the
report. The loader stages and measures the ciphertext (recorded as `encrypted.digest`, extended
into the runtime register), decides on everything else first, and decrypts only when
attestation, signatures, the approved list and every grant check have passed; it then measures
the plaintext inside staging and decides again before the workload starts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cbor2
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from loader.errors import InputError, TrustError
from loader.measure.digest import Digest, digest_path, format_digest, open_regular, parse_digest
from loader.parties import archive, stream
from loader.report.policy import valid_name

DATASET_FORMAT = "trusted-loader/dataset/v1"
KEY_FORMAT = "trusted-loader/dataset-key/v1"
GRANT_FORMAT = "trusted-loader/grant/v2"
MAX_GRANT_BYTES = 4096
MAX_KEY_FILE = 4096
_GRANT_FIELDS = {"format", "dataset", "policy", "cvm", "epk", "nonce", "wrapped"}


@dataclass(frozen=True)
class DatasetKey:
    dataset: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class Grant:
    dataset: str
    policy: str
    cvm: bytes
    epk: bytes
    nonce: bytes
    wrapped: bytes
    raw: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return format_digest(hashlib.sha256(self.raw).digest())


# --- owner side: encrypting a dataset -------------------------------------------------------


def _create_exclusive(path: Path, mode: int = 0o600) -> BinaryIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise InputError(f"{path}: cannot create: {exc.strerror}") from exc
    return os.fdopen(fd, "wb")


def encrypt_dataset(
    src: Path, name: str, out: Path, *, chunk: int = stream.DEFAULT_CHUNK
) -> tuple[DatasetKey, Digest]:
    """Encrypt a file or directory under a fresh DEK; return the key and the plaintext digest."""
    if not valid_name(name):
        raise InputError(f"dataset name: expected 1-64 of [A-Za-z0-9._-], found {name!r}")
    plain = digest_path(src)
    dek = DatasetKey(name, os.urandom(stream.KEY_LEN))
    fields = {"format": DATASET_FORMAT, "dataset": name, "kind": plain.kind}
    tmp = out.with_name(out.name + ".part")
    try:
        with _create_exclusive(tmp) as f:
            writer = stream.encrypt_to(f, dek.key, fields, chunk=chunk)
            if plain.kind == "file":
                fd = open_regular(src, shown=src)
                try:
                    while block := os.read(fd, 1 << 20):
                        writer.write(block)
                finally:
                    os.close(fd)
            else:
                archive.write_tar([("", src)], writer)  # type: ignore[arg-type]
            writer.close()
            os.fsync(f.fileno())
        if out.exists():
            raise InputError(f"{out}: already exists; refusing to overwrite an encrypted dataset")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return dek, plain


def write_key_file(key: DatasetKey, path: Path) -> None:
    doc = {"format": KEY_FORMAT, "dataset": key.dataset, "key": key.key.hex()}
    with _create_exclusive(path) as f:
        f.write((json.dumps(doc, indent=2) + "\n").encode())


def load_key_file(path: Path) -> DatasetKey:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise InputError(f"{path}: cannot read dataset key: {exc.strerror}") from exc
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or set(doc) != {"format", "dataset", "key"}:
            raise ValueError("expected exactly format, dataset and key")
        if doc["format"] != KEY_FORMAT:
            raise ValueError(f"format must be {KEY_FORMAT!r}")
        key = bytes.fromhex(doc["key"])
        if len(key) != stream.KEY_LEN or not valid_name(doc["dataset"]):
            raise ValueError("key must be 64 hex digits and dataset a valid name")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a dataset key file ({exc})") from None
    return DatasetKey(doc["dataset"], key)


# --- loader side: decrypting inside staging -------------------------------------------------


def dataset_header(path: Path, name: str) -> stream.Header:
    with open(path, "rb") as f:
        header = stream.read_header(f, f"encrypted dataset {name!r}")
    _check_dataset_header(header, name)
    return header


def _check_dataset_header(header: stream.Header, name: str) -> str:
    what = f"encrypted dataset {name!r}"
    fields = header.fields
    if set(fields) != {"format", "dataset", "kind"} or fields["format"] != DATASET_FORMAT:
        raise TrustError(f"{what}: header must be a {DATASET_FORMAT} header")
    if fields["dataset"] != name:
        raise TrustError(f"{what}: the file was encrypted as dataset {fields['dataset']!r}")
    if fields["kind"] not in ("file", "directory"):
        raise TrustError(f"{what}: header.kind must be 'file' or 'directory'")
    return str(fields["kind"])


def decrypt_dataset(src: Path, name: str, dek: bytes, dest: Path) -> Digest:
    """Decrypt the staged ciphertext `src` to `dest` (which must not exist); measure the plaintext."""
    what = f"encrypted dataset {name!r}"
    with open(src, "rb") as f:
        header = stream.read_header(f, what)
        kind = _check_dataset_header(header, name)
        chunks = stream.decrypt_chunks(f, dek, header, what)
        if kind == "file":
            with _create_exclusive(dest) as out:
                for part in chunks:
                    out.write(part)
            dest.chmod(0o400)
        else:
            reader = stream.PlainReader(chunks)
            archive.extract_tar(reader, dest, what, executable=False)  # type: ignore[arg-type]
            reader.drain()
    try:
        return digest_path(dest)
    except InputError as exc:
        raise TrustError(f"{what}: decrypted content cannot be measured: {exc}") from None


# --- grants ----------------------------------------------------------------------------------


def _kek(shared: bytes, dataset: str, policy: str, cvm: bytes, epk: bytes) -> AESGCM:
    info = GRANT_FORMAT.encode() + b"\x00" + cbor2.dumps([dataset, policy, cvm, epk], canonical=True)
    hkdf = HKDF(algorithm=hashes.SHA384(), length=32, salt=None, info=info)
    return AESGCM(hkdf.derive(shared))


def _aad(dataset: str, policy: str, cvm: bytes, epk: bytes, nonce: bytes) -> bytes:
    header = {
        "format": GRANT_FORMAT,
        "dataset": dataset,
        "policy": policy,
        "cvm": cvm,
        "epk": epk,
        "nonce": nonce,
    }
    return cbor2.dumps(header, canonical=True)


def _spki(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def create_grant(dek: DatasetKey, cvm_public: ec.EllipticCurvePublicKey, *, policy: str) -> bytes:
    """Wrap the dataset key to the CVM's attested P-384 key, for one approved list (its digest)."""
    if not isinstance(cvm_public, ec.EllipticCurvePublicKey) or not isinstance(
        cvm_public.curve, ec.SECP384R1
    ):
        raise TrustError("the CVM certificate's key is not a P-384 key; grants need one")
    policy = parse_digest(policy, "approved list digest")
    cvm = hashlib.sha256(_spki(cvm_public)).digest()
    ephemeral = ec.generate_private_key(ec.SECP384R1())
    epk = _spki(ephemeral.public_key())
    shared = ephemeral.exchange(ec.ECDH(), cvm_public)
    nonce = os.urandom(12)
    wrapped = _kek(shared, dek.dataset, policy, cvm, epk).encrypt(
        nonce, dek.key, _aad(dek.dataset, policy, cvm, epk, nonce)
    )
    doc = cbor2.loads(_aad(dek.dataset, policy, cvm, epk, nonce))
    return cbor2.dumps({**doc, "wrapped": wrapped}, canonical=True)


def parse_grant(data: bytes, what: str) -> Grant:
    if len(data) > MAX_GRANT_BYTES:
        raise TrustError(f"{what}: {len(data)} bytes, more than the {MAX_GRANT_BYTES} allowed")
    try:
        doc = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise TrustError(f"{what}: not well-formed CBOR ({exc})") from None
    if not isinstance(doc, dict) or cbor2.dumps(doc, canonical=True) != data:
        raise TrustError(f"{what}: expected a map in deterministic CBOR (altered or trailing bytes)")
    if set(doc) != _GRANT_FIELDS:
        diff = sorted(set(doc) ^ _GRANT_FIELDS, key=str)
        raise TrustError(f"{what}: unexpected or missing field {diff[0]!r}")
    if doc["format"] != GRANT_FORMAT:
        raise TrustError(f"{what}: format must be {GRANT_FORMAT!r}, found {doc['format']!r}")
    types: dict[str, Any] = {
        "dataset": str,
        "policy": str,
        "cvm": bytes,
        "epk": bytes,
        "nonce": bytes,
        "wrapped": bytes,
    }
    for key, kind in types.items():
        if not isinstance(doc[key], kind):
            raise TrustError(f"{what}: {key} has the wrong type {type(doc[key]).__name__}")
    if len(doc["cvm"]) != 32 or len(doc["nonce"]) != 12 or len(doc["wrapped"]) != stream.KEY_LEN + 16:
        raise TrustError(f"{what}: cvm, nonce or wrapped has the wrong length")
    return Grant(
        doc["dataset"],
        doc["policy"],
        doc["cvm"],
        doc["epk"],
        doc["nonce"],
        doc["wrapped"],
        data,
    )


def check_grant(grant: Grant, *, dataset: str, policy: str, cvm_spki: bytes) -> list[str]:
    """Every way `grant` was made for something other than this job on this CVM."""
    what = f"grant for dataset {dataset!r}"
    reasons = []
    if grant.dataset != dataset:
        reasons.append(f"{what}: made for dataset {grant.dataset!r}")
    mine = hashlib.sha256(cvm_spki).digest()
    if not hmac.compare_digest(grant.cvm, mine):
        reasons.append(
            f"{what}: made for CVM key sha256:{grant.cvm.hex()}, not this CVM's key sha256:{mine.hex()}"
        )
    if grant.policy != policy:
        reasons.append(f"{what}: made for approved list {grant.policy}, but this job's list is {policy}")
    return reasons


def unwrap_grant(
    grant: Grant, cvm_private: ec.EllipticCurvePrivateKey, *, dataset: str, policy: str
) -> bytes:
    """The DEK; the KDF info and AAD are rebuilt from the loader's own values, not the grant's."""
    what = f"grant for dataset {dataset!r}"
    cvm = hashlib.sha256(_spki(cvm_private.public_key())).digest()
    try:
        peer = serialization.load_der_public_key(grant.epk)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TrustError(f"{what}: epk is not a public key ({exc})") from None
    if not isinstance(peer, ec.EllipticCurvePublicKey) or not isinstance(peer.curve, ec.SECP384R1):
        raise TrustError(f"{what}: epk must be a P-384 public key")
    shared = cvm_private.exchange(ec.ECDH(), peer)
    try:
        return _kek(shared, dataset, policy, cvm, grant.epk).decrypt(
            grant.nonce, grant.wrapped, _aad(dataset, policy, cvm, grant.epk, grant.nonce)
        )
    except InvalidTag:
        raise TrustError(f"{what}: does not open with this CVM's key for this approved list") from None
