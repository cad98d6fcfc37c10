"""Units of the multi-party pieces: policy signatures, the chunked AEAD stream, the tar format,
grants and sealed outputs. Tampering tests flip bits deterministically over whole messages."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import tarfile
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.errors import InputError, TrustError
from loader.parties import archive, grants, seal, stream
from loader.report import cose
from loader.report.partykeys import generate, key_id
from loader.report.signing import check_signatures, parse_signature, sign_policy

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
DOC = b'{"version": 1, "engine": {"name": "e", "digest": "sha256:00"}}\n'
ENGINE = "sha256:" + "ab" * 32


def _sig(key, doc=DOC, issued=NOW, days=30):  # type: ignore[no-untyped-def]
    return sign_policy(doc, key, issued=issued, expires=issued + dt.timedelta(days=days))


# --- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["p384", "ed25519"])
def test_signature_roundtrip_and_header(kind):
    key = generate(kind)
    raw = _sig(key)
    sig = parse_signature(raw, "s")
    assert sig.kid == key_id(key.public_key())
    assert sig.alg == (cose.ALG_ES384 if kind == "p384" else cose.ALG_EDDSA)
    assert sig.expires - sig.issued == 30 * 86400
    assert sig.envelope.payload == b""  # detached
    check = check_signatures(DOC, [("s", raw)], {"a": key.public_key()}, ["a"], NOW)
    assert check.ok and check.verified == ("a",)


@pytest.mark.parametrize("kind", ["p384", "ed25519"])
def test_every_bit_flip_of_a_signature_is_rejected(kind):
    key = generate(kind)
    raw = _sig(key)
    signers = {"a": key.public_key()}
    for i in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[i // 8] ^= 1 << (i % 8)
        check = check_signatures(DOC, [("s", bytes(bad))], signers, ["a"], NOW)
        assert not check.ok, f"bit {i} flipped and still accepted"


def test_every_bit_flip_of_the_document_is_rejected():
    key = generate("ed25519")
    raw = _sig(key)
    for i in range(len(DOC) * 8):
        doc = bytearray(DOC)
        doc[i // 8] ^= 1 << (i % 8)
        assert not check_signatures(bytes(doc), [("s", raw)], {"a": key.public_key()}, ["a"], NOW).ok


def test_signature_reasons_name_the_signer():
    lab, clinic, stranger = generate("p384"), generate("ed25519"), generate("ed25519")
    signers = {"lab": lab.public_key(), "clinic": clinic.public_key()}
    envelopes = [
        ("lab.sig", _sig(lab)),
        ("lab2.sig", _sig(lab)),
        ("x.sig", _sig(stranger)),
        ("old.sig", _sig(clinic, issued=NOW - dt.timedelta(days=40))),
        ("junk.sig", b"\xa0"),
    ]
    check = check_signatures(DOC, envelopes, signers, ["lab", "clinic"], NOW)
    assert check.verified == ("lab",)
    text = "\n".join(check.reasons)
    assert "lab2.sig: signer 'lab' signed twice" in text
    assert (
        f"x.sig: signed by key sha256:{key_id(stranger.public_key()).hex()}, which is not a trusted" in text
    )
    assert "old.sig: signer 'clinic': signature expired at 2026-11-11T12:00:00Z" in text
    assert "junk.sig: expected a COSE_Sign1" in text
    assert "required signer 'clinic'" in text
    future = check_signatures(
        DOC, [("f", _sig(lab, issued=NOW + dt.timedelta(hours=1)))], signers, ["lab"], NOW
    )
    assert "not valid before" in future.reasons[0]


def test_signature_with_an_attached_payload_or_wrong_alg_is_refused():
    key = generate("p384")
    env = cbor2.loads(_sig(key))
    protected, _, _, signature = env.value
    attached = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, DOC, signature]), canonical=True)
    with pytest.raises(TrustError, match="detached payload"):
        parse_signature(attached, "s")
    hdr = cbor2.loads(protected)
    hdr[1] = -7  # ES256
    other = cbor2.dumps(
        cbor2.CBORTag(18, [cbor2.dumps(hdr, canonical=True), {}, None, signature]), canonical=True
    )
    with pytest.raises(TrustError, match="alg must be ES384"):
        parse_signature(other, "s")
    ed = generate("ed25519")
    hdr = cbor2.loads(cbor2.loads(_sig(ed)).value[0])
    hdr[4] = key_id(key.public_key())  # an EdDSA envelope claiming the P-384 key
    forged = cbor2.dumps(
        cbor2.CBORTag(18, [cbor2.dumps(hdr, canonical=True), {}, None, bytes(64)]), canonical=True
    )
    check = check_signatures(DOC, [("f", forged)], {"p": key.public_key()}, ["p"], NOW)
    assert "does not fit" in check.reasons[0]


# --- stream ----------------------------------------------------------------------------------


def _encrypt(data: bytes, key: bytes, chunk: int, fields=None) -> bytes:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    w = stream.encrypt_to(out, key, fields or {"k": "v"}, chunk=chunk)
    for i in range(0, len(data), 7):
        w.write(data[i : i + 7])
    w.close()
    return out.getvalue()


def _decrypt(blob: bytes, key: bytes) -> bytes:
    f = io.BytesIO(blob)
    header = stream.read_header(f, "t")
    return b"".join(stream.decrypt_chunks(f, key, header, "t"))


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(16, 64))
def test_stream_roundtrip(data, chunk):
    key = os.urandom(32)
    blob = _encrypt(data, key, chunk)
    assert _decrypt(blob, key) == data
    chunks = max(1, -(-len(data) // chunk))
    header_len = int.from_bytes(blob[8:12], "big")
    assert len(blob) == 12 + header_len + len(data) + 16 * chunks


def test_stream_rejects_every_bit_flip_truncation_and_extension():
    key = os.urandom(32)
    data = os.urandom(100)
    blob = _encrypt(data, key, 16)  # 7 chunks
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(TrustError):
            _decrypt(bytes(bad), key)
    for cut in range(len(blob)):
        with pytest.raises(TrustError):
            _decrypt(blob[:cut], key)
    for extra in (b"\x00", os.urandom(32), blob[-32:]):
        with pytest.raises(TrustError):
            _decrypt(blob + extra, key)
    with pytest.raises(TrustError, match="does not authenticate"):
        _decrypt(blob, os.urandom(32))


def test_stream_rejects_reordered_chunks_and_a_swapped_header():
    key = os.urandom(32)
    blob = _encrypt(os.urandom(64), key, 16)
    body_start = 12 + int.from_bytes(blob[8:12], "big")
    head, body = blob[:body_start], blob[body_start:]
    c = [body[i : i + 32] for i in range(0, len(body), 32)]
    with pytest.raises(TrustError):
        _decrypt(head + c[1] + c[0] + b"".join(c[2:]), key)
    other = _encrypt(os.urandom(64), key, 16, {"k": "w"})
    with pytest.raises(TrustError):
        _decrypt(other[:body_start] + body, key)


def test_stream_empty_plaintext_is_one_empty_final_chunk():
    key = os.urandom(32)
    blob = _encrypt(b"", key, 16)
    assert _decrypt(blob, key) == b""
    full = _encrypt(b"x" * 32, key, 16)  # exactly two full chunks, the second final
    assert _decrypt(full, key) == b"x" * 32


# --- tar --------------------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "z.txt").write_text("z")
    (root / "a" / "b" / "c.bin").write_bytes(os.urandom(1000))
    run = root / "a" / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o755)
    return root


def test_tar_is_deterministic_and_roundtrips(tmp_path):
    src = _tree(tmp_path / "src")
    one, two = io.BytesIO(), io.BytesIO()
    archive.write_tar([("", src)], one)
    os.utime(src / "z.txt", (1, 1))
    archive.write_tar([("", src)], two)
    assert one.getvalue() == two.getvalue()
    one.seek(0)
    assert archive.extract_tar(one, tmp_path / "out", "t") == 3
    from loader.measure.digest import digest_path

    assert digest_path(tmp_path / "out").digest == digest_path(src).digest
    assert os.stat(tmp_path / "out" / "a" / "run.sh").st_mode & 0o777 == 0o500


def test_tar_refuses_symlinks_when_writing(tmp_path):
    src = _tree(tmp_path / "src")
    (src / "link").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        archive.write_tar([("", src)], io.BytesIO())


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "a//b", "./a", "a\\b", "a\nb"])
def test_tar_extract_refuses_unsafe_names(tmp_path, name):
    with pytest.raises(TrustError):
        archive.extract_tar(_tar_with(tarfile.TarInfo(name), b"x"), tmp_path / "out", "t")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_tar_extract_refuses_links_and_specials(tmp_path, kind):
    info = tarfile.TarInfo("x")
    info.type = kind
    info.linkname = "/etc/passwd"
    with pytest.raises(TrustError, match="not a regular file"):
        archive.extract_tar(_tar_with(info), tmp_path / "out", "t")


def test_tar_extract_refuses_duplicates(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("a")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    buf.seek(0)
    with pytest.raises(TrustError, match="appears twice"):
        archive.extract_tar(buf, tmp_path / "out", "t")


# --- encrypted datasets and grants -----------------------------------------------------------


@pytest.fixture(scope="module")
def cvm() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("as_dir", [False, True])
def test_dataset_encrypt_decrypt_roundtrip(tmp_path, as_dir):
    src = _tree(tmp_path / "src") if as_dir else tmp_path / "data.csv"
    if not as_dir:
        src.write_bytes(os.urandom(5000))
    key, plain = grants.encrypt_dataset(src, "lab", tmp_path / "lab.tlenc", chunk=256)
    assert plain.kind == ("directory" if as_dir else "file")
    assert b"c.bin" not in (tmp_path / "lab.tlenc").read_bytes()
    got = grants.decrypt_dataset(tmp_path / "lab.tlenc", "lab", key.key, tmp_path / "out")
    assert got.digest == plain.digest
    with pytest.raises(TrustError, match="encrypted as dataset 'lab'"):
        grants.decrypt_dataset(tmp_path / "lab.tlenc", "clinic", key.key, tmp_path / "out2")
    with pytest.raises(TrustError, match="does not authenticate"):
        grants.decrypt_dataset(tmp_path / "lab.tlenc", "lab", os.urandom(32), tmp_path / "out3")
    with pytest.raises(InputError, match="already exists"):
        grants.encrypt_dataset(src, "lab", tmp_path / "lab.tlenc")


def test_key_file_roundtrip(tmp_path):
    key = grants.DatasetKey("lab", os.urandom(32))
    grants.write_key_file(key, tmp_path / "k")
    assert os.stat(tmp_path / "k").st_mode & 0o777 == 0o600
    assert grants.load_key_file(tmp_path / "k") == key
    assert key.key.hex() not in repr(key)


def test_grant_binds_dataset_approved_list_and_cvm(cvm):
    dek = grants.DatasetKey("lab", os.urandom(32))
    raw = grants.create_grant(dek, cvm.public_key(), policy=ENGINE)
    grant = grants.parse_grant(raw, "g")
    mine = {"dataset": "lab", "policy": ENGINE}
    assert grants.check_grant(grant, **mine, cvm_spki=_spki(cvm)) == []
    assert grants.unwrap_grant(grant, cvm, **mine) == dek.key
    other_cvm = ec.generate_private_key(ec.SECP384R1())
    for field, value in (("dataset", "clinic"), ("policy", "sha256:" + "cd" * 32)):
        changed = {**mine, field: value}
        reasons = grants.check_grant(grant, **changed, cvm_spki=_spki(cvm))
        what = {"dataset": "dataset", "policy": "approved list"}[field]
        assert len(reasons) == 1 and f"made for {what}" in reasons[0]
        with pytest.raises(TrustError, match="does not open"):
            grants.unwrap_grant(grant, cvm, **changed)
    assert "made for CVM key" in grants.check_grant(grant, **mine, cvm_spki=_spki(other_cvm))[0]
    with pytest.raises(TrustError, match="does not open"):
        grants.unwrap_grant(grant, other_cvm, **mine)


def test_every_bit_flip_of_a_grant_is_rejected(cvm):
    dek = grants.DatasetKey("lab", os.urandom(32))
    raw = grants.create_grant(dek, cvm.public_key(), policy=ENGINE)
    mine = {"dataset": "lab", "policy": ENGINE}
    for i in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[i // 8] ^= 1 << (i % 8)
        try:
            grant = grants.parse_grant(bytes(bad), "g")
        except TrustError:
            continue
        if grants.check_grant(grant, **mine, cvm_spki=_spki(cvm)):
            continue
        with pytest.raises(TrustError):
            grants.unwrap_grant(grant, cvm, **mine)


def test_grant_refuses_a_non_p384_cvm_key():
    dek = grants.DatasetKey("lab", os.urandom(32))
    with pytest.raises(TrustError, match="P-384"):
        grants.create_grant(dek, ec.generate_private_key(ec.SECP256R1()).public_key(), policy=ENGINE)


# --- sealed outputs --------------------------------------------------------------------------


CONTEXT = {"job": "j", "order": "o", "run": "r"}


@pytest.mark.parametrize("kind", ["p384", "x25519"])
def test_seal_opens_only_with_the_recipient_key(tmp_path, kind):
    src = _tree(tmp_path / "src")
    owner = generate(kind)
    sealed = seal.seal([("output/", src)], owner.public_key(), tmp_path / "o.sealed", context=CONTEXT)
    assert sealed.recipient == "sha256:" + key_id(owner.public_key()).hex()
    assert sealed.digest == "sha256:" + hashlib.sha256((tmp_path / "o.sealed").read_bytes()).hexdigest()
    assert (
        seal.open_sealed(tmp_path / "o.sealed", owner, tmp_path / "out", expected_digest=sealed.digest) == 3
    )
    assert (tmp_path / "out" / "output" / "a" / "b" / "c.bin").read_bytes() == (
        src / "a/b/c.bin"
    ).read_bytes()
    for other in (generate(kind), generate("p384" if kind == "x25519" else "x25519")):
        with pytest.raises(TrustError, match="sealed to key"):
            seal.open_sealed(tmp_path / "o.sealed", other, tmp_path / "no")
    with pytest.raises(TrustError, match="not the sha256:00"):
        seal.open_sealed(tmp_path / "o.sealed", owner, tmp_path / "no", expected_digest="sha256:00")
    assert not (tmp_path / "no").exists()


def test_seal_with_a_forged_recipient_field_does_not_open(tmp_path):
    """Rewriting the header's recipient to the opener's key id changes the AAD: refused."""
    src = _tree(tmp_path / "src")
    owner, thief = generate("x25519"), generate("x25519")
    seal.seal([("output/", src)], owner.public_key(), tmp_path / "o.sealed", context=CONTEXT)
    blob = (tmp_path / "o.sealed").read_bytes()
    forged = blob.replace(key_id(owner.public_key()), key_id(thief.public_key()))
    (tmp_path / "f.sealed").write_bytes(forged)
    with pytest.raises(TrustError):
        seal.open_sealed(tmp_path / "f.sealed", thief, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_any_bit_flip_of_a_sealed_output_is_detected(tmp_path_factory, position, bit):
    base = tmp_path_factory.getbasetemp() / "sealflip"
    if not (base / "o.sealed").exists():
        base.mkdir(exist_ok=True)
        src = base / "src"
        src.mkdir()
        (src / "r.json").write_bytes(os.urandom(300))
        (base / "owner.pem").write_bytes(
            (owner := generate("p384")).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        seal.seal([("output/", src)], owner.public_key(), base / "o.sealed", context=CONTEXT, chunk=128)
    owner = serialization.load_pem_private_key((base / "owner.pem").read_bytes(), None)
    blob = bytearray((base / "o.sealed").read_bytes())
    blob[position % len(blob)] ^= 1 << bit
    target = base / f"t{position}-{bit}.sealed"
    target.write_bytes(blob)
    out = base / f"out{position}-{bit}"
    with pytest.raises(TrustError):
        seal.open_sealed(target, owner, out)
    assert not out.exists()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_parsers_refuse_arbitrary_bytes_with_a_trust_error_only(data):
    for parse in (lambda: grants.parse_grant(data, "g"), lambda: parse_signature(data, "s")):
        with contextlib.suppress(TrustError):
            parse()
    with contextlib.suppress(TrustError):
        stream.read_header(io.BytesIO(stream.MAGIC + data), "h")
