"""A new leaf under a remembered issuer path (certs/leaf.py) is accepted only where OpenSSL accepts.

The direct checks never reject: where one fails, OpenSSL decides in full. These tests compare
the two on the real Intel PCK chains of every TDX vector (they share one PCK Platform CA) at
times before, inside and after each certificate's and CRL's validity, and show that the direct
checks decline, and the whole verification still fails, for a leaf signed by another key,
expired, revoked, under another issuer name, with a tampered extension, with an unknown critical
extension, or a CA; synthetic certificates (made here, named as such) play the attacker.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.tdx import quote, verifier
from certs import chain, memo
from certs import leaf as new_leaf
from certs.errors import CertificateFormatError, ChainError
from tests.snp_helpers import snp
from tests.tdx_helpers import QUOTES, quote_bytes, tdx, utc

CRLS = [
    chain.load_crl(tdx("go-tdx-guest", "pckcrl")),  # PCK Platform CA, 2023-06-08 .. 2023-07-08
    chain.load_crl(tdx("go-tdx-guest", "rootcrl.der")),  # Root CA, 2023-04-03 .. 2024-04-02
]
TIMES = [
    utc(t)
    for t in (
        "2018-05-21",
        "2022-09-21",
        "2023-06-08",
        "2023-07-01",
        "2023-07-09",
        "2025-11-01",
        "2033-02-01",
        "2050-01-01",
    )
]
PCK_QUOTES = [name for name in QUOTES if name != "azure"]


def _pck(name: str) -> list[x509.Certificate]:
    return verifier._pck_chain_certs(quote.parse(quote_bytes(name)))


def _openssl(
    leaf: x509.Certificate, above: list[x509.Certificate], at: dt.datetime, crls: list, mode: str
) -> bool:
    try:
        chain._openssl_verify(leaf, above[:-1], above[-1:], at, crls, mode)  # type: ignore[arg-type]
    except ChainError:
        return False
    return True


def _issuers(above: list[x509.Certificate], crls: list, mode: str) -> new_leaf.IssuerPath:
    made = new_leaf.IssuerPath.of(above, given=above, crls=crls, check_crl=mode != "none", der=chain._der)
    assert made is not None
    return made


@pytest.mark.parametrize("mode", ["none", "leaf", "all"])
def test_direct_checks_agree_with_openssl_on_every_real_pck_leaf_at_every_time(mode: str) -> None:
    ca, root = _pck("trustee_4")[1], verifier.bundled_root()
    crls = {"none": [], "leaf": CRLS[:1], "all": CRLS}[mode]
    issuers = _issuers([ca, root], crls, mode)
    agreed = accepted = 0
    for name in PCK_QUOTES:
        leaf, embedded_ca = _pck(name)[:2]
        assert embedded_ca.public_bytes(serialization.Encoding.DER) == ca.public_bytes(
            serialization.Encoding.DER
        )
        for at in TIMES:
            # the path is remembered only while OpenSSL accepted it; its windows are checked here
            path_ok = _openssl(
                ca, [root], at, crls[1:] if mode == "all" else [], mode if mode == "all" else "none"
            )
            direct = path_ok and new_leaf.accepted(leaf, issuers, at)
            full = _openssl(leaf, [ca, root], at, crls, mode)
            assert direct == full, (name, at, mode)
            agreed += 1
            accepted += direct
    assert agreed == len(PCK_QUOTES) * len(TIMES) and accepted > 0


def test_verify_chain_serves_a_new_real_leaf_directly_and_equal_to_a_cold_verification() -> None:
    at = utc("2023-07-01")
    seed, other = _pck("trustee_4"), _pck("go_v4")
    memo.clear_all()
    cold = chain.verify_chain(
        other[0], intermediates=other[1:], roots=[verifier.bundled_root()], at=at, crls=CRLS, crl_mode="all"
    )
    memo.clear_all()
    chain.verify_chain(
        seed[0], intermediates=seed[1:], roots=[verifier.bundled_root()], at=at, crls=CRLS, crl_mode="all"
    )
    assert len(chain._ISSUER_PATHS) == 1
    calls = []
    real = chain._openssl_verify
    chain._openssl_verify = lambda *a: calls.append(a) or real(*a)  # type: ignore[assignment]
    try:
        warm = chain.verify_chain(
            other[0],
            intermediates=other[1:],
            roots=[verifier.bundled_root()],
            at=at,
            crls=CRLS,
            crl_mode="all",
        )
    finally:
        chain._openssl_verify = real  # type: ignore[assignment]
    assert not calls, "the new leaf should have been checked directly"
    der = serialization.Encoding.DER
    assert [c.public_bytes(der) for c in warm] == [c.public_bytes(der) for c in cold]
    with pytest.raises(ChainError):  # past the PCK CRL's nextUpdate: OpenSSL decides, and refuses
        chain.verify_chain(
            other[0],
            intermediates=other[1:],
            roots=[verifier.bundled_root()],
            at=utc("2023-07-09"),
            crls=CRLS,
            crl_mode="all",
        )


def test_a_tampered_sgx_extension_in_a_real_leaf_is_refused() -> None:
    seed = _pck("trustee_4")
    leaf_der = bytearray(seed[0].public_bytes(serialization.Encoding.DER))
    fmspc_oid = bytes.fromhex("060a2a864886f84d010d0104")  # 1.2.840.113741.1.13.1.4
    at_value = leaf_der.index(fmspc_oid) + len(fmspc_oid) + 2
    leaf_der[at_value] ^= 1
    tampered = x509.load_der_x509_certificate(bytes(leaf_der))
    at = utc("2023-07-01")
    issuers = _issuers([seed[1], verifier.bundled_root()], CRLS, "all")
    assert not new_leaf.accepted(tampered, issuers, at)
    chain.verify_chain(
        seed[0], intermediates=seed[1:], roots=[verifier.bundled_root()], at=at, crls=CRLS, crl_mode="all"
    )
    with pytest.raises(ChainError, match="signature"):
        chain.verify_chain(
            tampered,
            intermediates=seed[1:],
            roots=[verifier.bundled_root()],
            at=at,
            crls=CRLS,
            crl_mode="all",
        )


# --- synthetic hierarchy (made here; not vendor certificates) -------------------------------------

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
AT = T0 + dt.timedelta(days=10)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer: str,
    key,
    signer,
    *,
    ca: bool,
    serial: int = 1,
    days: int = 100,
    extra=(),
    skid_of=None,
):  # type: ignore[no-untyped-def]
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(T0)
        .not_valid_after(T0 + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((skid_of or signer).public_key()),
            critical=False,
        )
    )
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, hashes.SHA256())


class _Synthetic:
    def __init__(self) -> None:
        self.root_key, self.ca_key, self.other_key = (
            ec.generate_private_key(ec.SECP256R1()) for _ in range(3)
        )
        self.root = _cert(
            "Synthetic Root", "Synthetic Root", self.root_key, self.root_key, ca=True, days=1000
        )
        self.ca = _cert("Synthetic CA", "Synthetic Root", self.ca_key, self.root_key, ca=True, days=1000)
        revoked = x509.RevokedCertificateBuilder().serial_number(66).revocation_date(T0).build()
        self.crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(_name("Synthetic CA"))
            .last_update(T0)
            .next_update(T0 + dt.timedelta(days=30))
            .add_revoked_certificate(revoked)
            .sign(self.ca_key, hashes.SHA256())
        )

    def leaf(self, **kw):  # type: ignore[no-untyped-def]
        key = ec.generate_private_key(ec.SECP256R1())
        signer = kw.pop("signer", self.ca_key)
        issuer = kw.pop("issuer", "Synthetic CA")
        return _cert("Synthetic leaf", issuer, key, signer, ca=kw.pop("ca", False), skid_of=self.ca_key, **kw)

    def verify(self, leaf: x509.Certificate, at: dt.datetime = AT) -> list[x509.Certificate]:
        return chain.verify_chain(
            leaf, intermediates=[self.ca], roots=[self.root], at=at, crls=[self.crl], crl_mode="leaf"
        )


@pytest.fixture(scope="module")
def pki() -> _Synthetic:
    return _Synthetic()


def _seeded(pki: _Synthetic) -> new_leaf.IssuerPath:
    memo.clear_all()
    pki.verify(pki.leaf(serial=2))
    assert len(chain._ISSUER_PATHS) == 1
    return next(iter(chain._ISSUER_PATHS._items.values()))


def test_a_good_new_synthetic_leaf_is_accepted_directly(pki: _Synthetic) -> None:
    issuers = _seeded(pki)
    good = pki.leaf(serial=3)
    assert new_leaf.accepted(good, issuers, AT)
    assert pki.verify(good)[0] is good


UNKNOWN_CRITICAL = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")


@pytest.mark.parametrize(
    ("case", "kwargs", "at"),
    [
        ("signed by another key", {"signer": "other"}, AT),
        ("expired", {"days": 5}, AT),
        ("not yet valid", {}, T0 - dt.timedelta(seconds=1)),
        ("revoked serial", {"serial": 66}, AT),
        ("another issuer name", {"issuer": "Synthetic CA 2"}, AT),
        ("unknown critical extension", {"extra": [(UNKNOWN_CRITICAL, True)]}, AT),
    ],
)
def test_attacks_are_declined_directly_and_refused_by_openssl(
    pki: _Synthetic, case: str, kwargs: dict, at: dt.datetime
) -> None:
    issuers = _seeded(pki)
    if kwargs.get("signer") == "other":
        kwargs = {**kwargs, "signer": pki.other_key}
    bad = pki.leaf(serial=kwargs.pop("serial", 4), **kwargs)
    assert not new_leaf.accepted(bad, issuers, at), case
    with pytest.raises(ChainError):
        pki.verify(bad, at)


def test_a_ca_leaf_and_a_crl_past_next_update_are_left_to_openssl(pki: _Synthetic) -> None:
    issuers = _seeded(pki)
    assert not new_leaf.accepted(pki.leaf(serial=5, ca=True), issuers, AT)
    late = T0 + dt.timedelta(days=31)
    assert not new_leaf.accepted(pki.leaf(serial=6), issuers, late)
    with pytest.raises(ChainError):
        pki.verify(pki.leaf(serial=6), late)


def test_a_tampered_synthetic_leaf_is_refused(pki: _Synthetic) -> None:
    issuers = _seeded(pki)
    der = bytearray(pki.leaf(serial=7).public_bytes(serialization.Encoding.DER))
    der[der.index(b"Synthetic leaf") + 1] ^= 0x20  # the subject's CN, inside the signed TBS
    tampered = x509.load_der_x509_certificate(bytes(der))
    assert not new_leaf.accepted(tampered, issuers, AT)
    with pytest.raises(ChainError):
        pki.verify(tampered)


def test_direct_checks_agree_with_openssl_on_real_amd_vceks_at_every_time() -> None:
    """Two real Milan VCEKs (RSA-PSS, serial 0, no authority key identifier) under one ASK."""
    with chain.serial_warnings_quiet():
        vceks = [
            chain.load_certificates(snp(name))[0]
            for name in ("virtee-sev/vcek_milan.der", "go-sev-guest/vcek.testcer")
        ]
        ask, ark = chain.load_certificates(snp("virtee-sev/cert_chain_milan"))
        issuers = _issuers([ask, ark], [], "none")
        results = []
        for vcek in vceks:
            for at in [
                utc(t) for t in ("2020-01-01", "2022-09-25", "2026-11-21", "2045-01-01", "2060-01-01")
            ]:
                path_ok = _openssl(ask, [ark], at, [], "none")
                direct = path_ok and new_leaf.accepted(vcek, issuers, at)
                assert direct == _openssl(vcek, [ask, ark], at, [], "none"), (vcek.subject, at)
                results.append(direct)
    assert any(results) and not all(results)


def test_a_leaf_with_a_malformed_extension_is_left_to_openssl_which_refuses_it() -> None:
    """cryptography parses extensions lazily: a certificate built outside certs/chain.py's loader
    may raise on first reading them; the direct checks must not leak that as another error."""
    seed = _pck("trustee_4")
    der = bytearray(seed[0].public_bytes(serialization.Encoding.DER))
    key_usage = bytes.fromhex("0603551d0f0101ff04040302")  # keyUsage, critical, OCTET STRING { BIT STRING
    at_bits = der.index(key_usage) + len(key_usage) - 2
    der[at_bits] = 0x05  # the BIT STRING tag becomes NULL: the extension no longer parses
    broken = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(ValueError):
        _ = broken.extensions
    at = utc("2023-07-01")
    issuers = _issuers([seed[1], verifier.bundled_root()], CRLS, "all")
    assert not new_leaf.accepted(broken, issuers, at)
    memo.clear_all()
    chain.verify_chain(
        seed[0], intermediates=seed[1:], roots=[verifier.bundled_root()], at=at, crls=CRLS, crl_mode="all"
    )
    with pytest.raises(ChainError):
        chain.verify_chain(
            broken, intermediates=seed[1:], roots=[verifier.bundled_root()], at=at, crls=CRLS, crl_mode="all"
        )


PEMS = [c.public_bytes(serialization.Encoding.PEM) for c in _pck("trustee_4")]


@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(PEMS) - 1), min_size=1, max_size=4),
    junk=st.sampled_from([b"", b"\n", b" ", b"x", b"-----", b"\r\n", b"=", b"A"]),
    where=st.integers(0, 4000),
)
def test_a_bundle_read_block_by_block_reads_as_the_whole_bundle(picks: list, junk: bytes, where: int) -> None:
    """The per-block cache (certs/chain.py) gives exactly what parsing the whole bundle gives."""
    bundle = b"".join(PEMS[i] for i in picks)
    where %= len(bundle) + 1
    data = bundle[:where] + junk + bundle[where:]
    memo.clear_all()
    try:
        mine = [c.public_bytes(serialization.Encoding.DER) for c in chain.load_certificates(data)]
    except CertificateFormatError:
        mine = None
    try:
        whole = [
            c.public_bytes(serialization.Encoding.DER) for c in chain._parse_certificates(data, "bundle")
        ]
    except CertificateFormatError:
        whole = None
    assert mine == whole
