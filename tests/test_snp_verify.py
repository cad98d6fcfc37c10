"""SnpVerifier against the real vectors, tampered copies, synthetic VLEK/CRL PKI, and policies."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import verifier_for
from attestation.evidence import Evidence, Result, Trust
from attestation.sevsnp import report, roots
from attestation.sevsnp.products import Product
from attestation.sevsnp.validate import PolicyError, SnpPolicy
from attestation.sevsnp.verifier import SnpVerifier
from certs.chain import fingerprint, load_certificates
from tests.snp_helpers import AT_2026, SyntheticPki, der, resign, snp

GSG = "go-sev-guest/"
VIRTEE = "virtee-sev/"


def run(data: bytes, *, at=AT_2026, expected=None, aux=None, roots_=None, **collateral) -> Result:  # type: ignore[no-untyped-def]
    options = collateral.pop("options", {})
    trust = Trust(roots=roots_ or {}, collateral=collateral, options=options)
    return SnpVerifier().verify(
        Evidence("sev-snp", data, aux or {}), expected_report_data=expected, trust=trust, at=at
    )


def failed(result: Result) -> set[str]:
    return {c.name for c in result.failures}


@pytest.fixture(scope="module")
def milan() -> tuple[bytes, bytes]:
    return snp(VIRTEE + "report_milan.bin"), snp(VIRTEE + "vcek_milan.der")


def test_registry_gives_snp_verifier():
    assert isinstance(verifier_for("sev-snp"), SnpVerifier)


def test_virtee_milan_report_verifies_with_bundled_chain(milan):
    data, vcek = milan
    res = run(data, vcek=vcek)
    assert res.ok, res.reason()
    names = [c.name for c in res.checks]
    for step in ("format", "report_signature", "chain", "chain_algorithms", "hwid", "tcb", "policy_debug"):
        assert step in names
    assert res.claims["product"] == "Milan" and res.claims["crl_checked"] is False
    assert res.report_data == data[0x50:0x90]


def test_go_sev_guest_report_verifies_but_debug_policy_is_refused_by_default():
    data, vcek, chain = (
        snp(GSG + "attestation.bin"),
        snp(GSG + "vcek.testcer"),
        snp(GSG + "ask_ark_milan.pem"),
    )
    refused = run(data, vcek=vcek, chain=chain)
    assert failed(refused) == {"policy_debug"}
    allowed = run(data, vcek=vcek, chain=chain, options={"policy": SnpPolicy(allow_debug=True)})
    assert allowed.ok, allowed.reason()
    assert allowed.claims["stepping"] == "B0"


def test_chain_bundle_order_and_extras_do_not_matter(milan):
    data, vcek = milan
    ask, ark = load_certificates(snp(GSG + "ask_ark_milan.pem"))
    genoa = snp(GSG + "ask_ark_genoa.pem")
    from cryptography.hazmat.primitives.serialization import Encoding

    bundle = (
        genoa
        + ark.public_bytes(Encoding.PEM)
        + snp(GSG + "ask_ark_turin_vlek.pem")
        + ask.public_bytes(Encoding.PEM)
    )
    res = run(data, vcek=vcek, chain=bundle)
    assert res.ok, res.reason()


def test_vcek_given_as_pem_is_accepted(milan):
    data, vcek = milan
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = load_certificates(vcek)[0].public_bytes(Encoding.PEM)
    assert run(data, vcek=pem).ok


def test_wrong_vcek_rejected():
    res = run(snp(VIRTEE + "report_milan.bin"), vcek=snp(GSG + "vcek.testcer"))
    assert {"report_signature", "hwid", "tcb"} <= failed(res)


def test_chain_of_another_product_rejected(milan):
    data, vcek = milan
    res = run(data, vcek=vcek, chain=snp(GSG + "ask_ark_genoa.pem"))
    assert failed(res) == {"chain"}
    assert "does not chain to the Milan ARK" in res.reason()


def test_product_flag_that_contradicts_the_certificate_rejected(milan):
    data, vcek = milan
    res = run(data, vcek=vcek, options={"product": "genoa"})
    assert "product" in failed(res)
    assert "sources disagree" in res.reason()


def test_turin_vcek_does_not_verify_a_milan_report(milan):
    # A v2 report has no CPUID fields, so the product comes from the (genuine) Turin VCEK, whose
    # chain is fine: the signature, the chip ID and the TCB give it away.
    res = run(milan[0], vcek=snp(VIRTEE + "vcek_turin.der"))
    assert failed(res) == {"report_signature", "hwid", "tcb"}
    assert res.claims["product"] == "Turin"


def test_real_vcek_expired_after_not_after(milan):
    data, vcek = milan
    assert run(data, vcek=vcek, at=dt.datetime(2030, 4, 2, tzinfo=dt.UTC)).ok
    late = run(data, vcek=vcek, at=dt.datetime(2030, 4, 4, tzinfo=dt.UTC))
    assert failed(late) == {"chain"} and "expired" in late.reason()
    gsg = run(
        snp(GSG + "attestation.bin"),
        vcek=snp(GSG + "vcek.testcer"),
        at=dt.datetime(2029, 9, 25, tzinfo=dt.UTC),
    )
    assert "chain" in failed(gsg) and "expired" in gsg.reason()


def test_vcek_byte_40_flip_fails(milan):
    data, vcek = milan
    bad = bytearray(vcek)
    bad[40] ^= 0xFF
    assert not run(data, vcek=bytes(bad)).ok


def test_report_data_binding(milan):
    data, vcek = milan
    assert run(data, vcek=vcek, expected=data[0x50:0x90]).ok
    res = run(data, vcek=vcek, expected=bytes(64))
    assert failed(res) == {"report_data"}


def test_every_bit_flip_of_the_signed_part_is_rejected(milan):
    data, vcek = milan
    verifier = SnpVerifier()
    trust = Trust(collateral={"vcek": vcek})
    accepted = []
    for bit in range(report.SIGNED_SIZE * 8):
        raw = bytearray(data)
        raw[bit // 8] ^= 1 << (bit % 8)
        res = verifier.verify(
            Evidence("sev-snp", bytes(raw)), expected_report_data=None, trust=trust, at=AT_2026
        )
        if res.ok:
            accepted.append(bit)
    assert accepted == []


@settings(max_examples=300, deadline=None)
@given(st.integers(report.SIGNED_SIZE * 8, report.REPORT_SIZE * 8 - 1))
def test_bit_flips_in_the_signature_field_are_rejected(bit):
    data = bytearray(snp(VIRTEE + "report_milan.bin"))
    data[bit // 8] ^= 1 << (bit % 8)
    res = run(bytes(data), vcek=snp(VIRTEE + "vcek_milan.der"))
    assert not res.ok
    assert failed(res) & {"format", "report_signature"}


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_is_a_failed_format_check(blob):
    res = run(blob, vcek=snp(VIRTEE + "vcek_milan.der"))
    assert not res.ok and res.checks[0].name == "format" and "\n" not in res.reason()


def test_missing_or_malformed_certificate(milan):
    data, vcek = milan
    assert failed(run(data)) >= {"certificate"}
    assert "certificate" in failed(run(data, vcek=vcek[:200]))
    assert "certificate" in failed(run(data, vcek=snp(GSG + "ask_ark_milan.pem")))  # two certs, RSA


def test_certificate_from_evidence_aux(milan):
    data, vcek = milan
    res = run(data, aux={"vcek": vcek, "chain": snp(GSG + "ask_ark_milan.pem")})
    assert res.ok, res.reason()
    assert "evidence aux" in next(c.detail for c in res.checks if c.name == "certificate")


def test_masked_or_unknown_signing_key_rejected(milan):
    data, vcek = milan
    for key_info, why in ((0x2, "MASK_CHIP_KEY"), (7 << 2, "SIGNING_KEY is none"), (3 << 2, "reserved(3)")):
        raw = bytearray(data)
        raw[report.KEY_INFO] = key_info
        res = run(bytes(raw), vcek=vcek)
        assert "signing_key" in failed(res) and why in res.reason()


def test_vcek_presented_for_a_vlek_signed_report_rejected(milan):
    data, vcek = milan
    key = ec.generate_private_key(ec.SECP384R1())
    res = run(resign(data, key, signing_key=1), vcek=vcek)
    assert "certificate" in failed(res) and "SEV-VCEK" in res.reason()


def test_bundled_ark_fingerprints_are_pinned():
    # The manifest's SHA-256 prefixes: Milan 69:D0:63:B4…54:0B:CD, Genoa 4C:65:98:D1…3D:B2:F1.
    assert roots.ARK_SHA256[Product.MILAN].startswith("69d063b4") and roots.ARK_SHA256[
        Product.MILAN
    ].endswith("540bcd")
    assert roots.ARK_SHA256[Product.GENOA].startswith("4c6598d1") and roots.ARK_SHA256[
        Product.GENOA
    ].endswith("3db2f1")
    vectors = {
        Product.MILAN: "ask_ark_milan.pem",
        Product.GENOA: "ask_ark_genoa.pem",
        Product.TURIN: "ask_ark_turin_vcek.pem",
    }
    for product, name in vectors.items():
        expected = fingerprint(load_certificates(snp(GSG + name))[1])
        for kind in ("vcek", "vlek"):
            assert fingerprint(roots.bundled_chain(product, kind)[1]) == expected
        assert roots.ARK_SHA256[product] == expected


def test_turin_vcek_chains_to_turin_ark_only():
    from certs.chain import verify_chain

    turin = load_certificates(snp(VIRTEE + "vcek_turin.der"))[0]
    ask, ark = roots.bundled_chain(Product.TURIN, "vcek")
    chain = verify_chain(turin, intermediates=[ask], roots=[ark], at=AT_2026)
    assert [c.subject.rfc4514_string().split(",")[0] for c in chain] == [
        "CN=SEV-VCEK",
        "CN=SEV-Turin",
        "CN=ARK-Turin",
    ]
    from certs.errors import ChainError

    m_ask, m_ark = roots.bundled_chain(Product.MILAN, "vcek")
    with pytest.raises(ChainError):
        verify_chain(turin, intermediates=[m_ask], roots=[m_ark], at=AT_2026)


# ------------------------------------------------ SYNTHETIC VLEK PKI (test artefacts, not AMD)


@pytest.fixture(scope="module")
def vlek_setup(milan):
    """A synthetic ARK -> ASVK -> VLEK with a VLEK valid only in 2024, and a Milan report re-signed
    by that VLEK. Everything here is generated by the test; none of it is AMD evidence."""
    pki = SyntheticPki(product="Milan", kind="vlek")
    key = ec.generate_private_key(ec.SECP384R1())
    rep = report.parse(milan[0])
    spls = rep.tcb("reported_tcb", Product.MILAN).parts()
    cert = pki.leaf(
        key,
        spls=spls,
        start=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        end=dt.datetime(2024, 12, 31, tzinfo=dt.UTC),
    )
    return pki, der(cert), resign(milan[0], key, signing_key=1)


def test_synthetic_vlek_verifies_inside_its_validity(vlek_setup):
    pki, vlek, data = vlek_setup
    res = run(
        data,
        at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
        vlek=vlek,
        chain=pki.chain_pem(),
        roots_={"ark": pki.ark_pem()},
    )
    assert res.ok, res.reason()
    assert res.claims["signing_key"] == "vlek" and res.claims["signing_cert"]["csp_id"] == "synthetic-csp"


def test_synthetic_vlek_expired_at_current_time_rejected(vlek_setup):
    pki, vlek, data = vlek_setup
    res = run(data, at=AT_2026, vcek=vlek, chain=pki.chain_pem(), roots_={"ark": pki.ark_pem()})
    assert failed(res) == {"chain"} and "expired" in res.reason()


def test_synthetic_vlek_is_not_trusted_by_the_bundled_amd_roots(vlek_setup):
    pki, vlek, data = vlek_setup
    res = run(data, at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC), vlek=vlek, chain=pki.chain_pem())
    assert failed(res) == {"chain"}


def test_self_signed_ark_in_the_chain_bundle_is_never_an_anchor(vlek_setup):
    pki, vlek, data = vlek_setup
    # The bundle carries the synthetic ARK, but the anchor is the bundled AMD ARK-Milan.
    res = run(
        data, at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC), vlek=vlek, chain=pki.chain_pem() + pki.ark_pem()
    )
    assert "chain" in failed(res)


# ------------------------------------------------ CRL (synthetic test CA; no AMD CRL exists in the vectors)


def test_crl_path_with_synthetic_ca(vlek_setup):
    pki, vlek, data = vlek_setup
    when = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    base = {"vlek": vlek, "chain": pki.chain_pem()}
    anchors = {"ark": pki.ark_pem()}
    clean = run(
        data, at=when, roots_=anchors, crl=pki.crl([], last=dt.datetime(2024, 5, 1, tzinfo=dt.UTC)), **base
    )
    assert clean.ok, clean.reason()
    assert clean.claims["crl_checked"] is True
    revoked = run(
        data,
        at=when,
        roots_=anchors,
        crl=pki.crl([pki.ask], last=dt.datetime(2024, 5, 1, tzinfo=dt.UTC)),
        **base,
    )
    assert failed(revoked) == {"crl"} and "revoked" in revoked.reason()
    stale = run(
        data,
        at=when,
        roots_=anchors,
        crl=pki.crl(
            [], last=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), nxt=dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
        ),
        **base,
    )
    assert failed(stale) == {"crl"} and "expired" in stale.reason()
    other = SyntheticPki(product="Milan", kind="vlek")
    forged = pki.crl([], signer=other.ark_key, last=dt.datetime(2024, 5, 1, tzinfo=dt.UTC))
    wrong_signer = run(data, at=when, roots_=anchors, crl=forged, **base)
    assert failed(wrong_signer) == {"crl"}
    garbage = run(data, at=when, roots_=anchors, crl=b"not a crl", **base)
    assert failed(garbage) == {"crl"}


def test_crl_of_another_issuer_rejected_for_real_chain(milan):
    data, vcek = milan
    other = SyntheticPki(product="Milan", kind="vcek")
    res = run(data, vcek=vcek, crl=other.crl([]))
    assert failed(res) == {"crl"}


# ------------------------------------------------ validation


def test_policy_checks_on_real_report(milan):
    data, vcek = milan
    rep = report.parse(data)
    good = SnpPolicy(
        measurements=(bytes(48), rep.measurement),
        host_data=bytes(32),
        id_key_digests=(bytes(48),),
        min_tcb=(("bootloader", 3), ("snp", 8), ("microcode", 115)),
        vmpl=0,
        min_guest_svn=0,
        signing_key="vcek",
    )
    res = run(data, vcek=vcek, options={"policy": good})
    assert res.ok, res.reason()
    assert {"measurement", "host_data", "id_key_digest", "min_tcb", "vmpl", "guest_svn"} <= {
        c.name for c in res.checks
    }
    bad = SnpPolicy(
        measurements=(bytes(48),),
        host_data=b"\x01" * 32,
        min_tcb=(("snp", 9),),
        vmpl=1,
        min_guest_svn=1,
        signing_key="vlek",
    )
    res = run(data, vcek=vcek, options={"policy": bad})
    assert failed(res) == {"measurement", "host_data", "min_tcb", "vmpl", "guest_svn", "signing_key_policy"}


def test_policy_fmc_on_milan_fails(milan):
    data, vcek = milan
    res = run(data, vcek=vcek, options={"policy": {"min_tcb": {"fmc": 0}}})
    assert failed(res) == {"min_tcb"} and "fmc: not part of Milan" in res.reason()


def test_migrate_ma_and_unknown_policy_bits_refused(milan):
    data, vcek = milan
    key = ec.generate_private_key(ec.SECP384R1())
    raw = bytearray(data)
    raw[report.POLICY + 2] |= 0x04  # bit 18 MIGRATE_MA
    raw[report.POLICY + 4] |= 0x01  # bit 32: unknown
    res = run(bytes(raw), vcek=vcek)
    assert {"policy_migrate_ma", "policy_bits"} <= failed(res)
    # with a synthetic key the policy checks are independent of the signature outcome
    assert "report_signature" in failed(run(resign(bytes(raw), key), vcek=vcek))


def test_policy_from_mapping():
    pol = SnpPolicy.from_mapping(
        {"measurement": "00" * 48, "min_tcb": "bl=3,ucode=115", "vmpl": 0, "allow_debug": True}
    )
    assert pol.measurements == (bytes(48),) and dict(pol.min_tcb) == {"bootloader": 3, "microcode": 115}
    for bad in (
        {"measurment": "00"},
        {"measurement": "zz"},
        {"measurement": "00"},
        {"vmpl": 7},
        {"allow_debug": "yes"},
        {"min_tcb": {"nope": 1}},
        {"signing_key": "ark"},
    ):
        with pytest.raises(PolicyError):
            SnpPolicy.from_mapping(bad)


def test_bad_policy_option_is_a_failed_check(milan):
    data, vcek = milan
    res = run(data, vcek=vcek, options={"policy": {"vmpl": "zero"}})
    assert "options" in failed(res)


def test_v3_cpuid_of_another_product_contradicts_the_vcek(milan):
    data, vcek = milan
    raw = bytearray(data)
    raw[report.VERSION] = 3
    raw[report.CPUID_FAM_ID : report.CPUID_STEP + 1] = bytes([0x19, 0x11, 0x01])  # Genoa
    res = run(bytes(raw), vcek=vcek)
    assert {"product", "report_signature"} <= failed(res)
    assert "report CPUID Genoa" in next(c.detail for c in res.checks if c.name == "product")


@pytest.mark.parametrize("fill", [bytes(72), b"\xff" * 72])
@pytest.mark.parametrize("offset", [report.SIGNATURE_R, report.SIGNATURE_S])
def test_degenerate_signature_components_rejected(milan, fill, offset):
    data, vcek = milan
    raw = bytearray(data)
    raw[offset : offset + 72] = fill
    assert failed(run(bytes(raw), vcek=vcek)) == {"report_signature"}
