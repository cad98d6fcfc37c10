"""RIMs: the real NVIDIA SWID tags (signature, chain, expiry) and the comparison with a report.

The comparison logic is also exercised with RIMs that this test signs itself under a
test-only root (passed as the RIM trust anchor), because the real RIMs do not describe the
real report's firmware (see MANIFEST).
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

from attestation.errors import EvidenceFormatError, VerificationError
from attestation.evidence import Trust
from attestation.nvidia import rim, spdm
from attestation.nvidia.verifier import NvidiaVerifier, rim_roots
from certs.errors import ChainError
from tests.nvidia_helpers import (
    DRIVER_RIM_TEST,
    NOW,
    REPORT_NONCE,
    RIM_VALID,
    VBIOS_RIM,
    VBIOS_RIM_TEST,
    real_evidence,
)


@pytest.fixture(scope="module")
def vbios_rim(vectors):
    return (vectors / VBIOS_RIM).read_bytes()


@pytest.mark.parametrize(
    ("name", "kind", "version", "active", "signer_expiry"),
    [
        (VBIOS_RIM, "vbios", "96.00.5E.00.01", 12, dt.date(2025, 6, 22)),
        (VBIOS_RIM_TEST, "vbios", "96.00.5E.00.01", 12, dt.date(2025, 6, 22)),
        (DRIVER_RIM_TEST, "driver", "545.00", 21, dt.date(2025, 6, 26)),
    ],
)
def test_real_rims_parse_and_their_signatures_verify(vectors, name, kind, version, active, signer_expiry):
    data = (vectors / name).read_bytes()
    parsed = rim.verify_signature(data)
    assert (parsed.kind, parsed.version, parsed.name) == (kind, version, "GH100")
    assert len(parsed.measurements) == 64 and len(parsed.active) == active
    assert all(len(h) == 48 for m in parsed.measurements.values() for h in m.alternatives)
    subjects = [c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for c in parsed.certificates]
    assert subjects == [
        "HCC RIM L4 Signer",
        "NVIDIA Reference Value L3 GH100 001",
        "NVIDIA Reference Value GH100 CA",
        "NVIDIA CoRIM signing Root CA",
    ]
    assert parsed.certificates[0].not_valid_after_utc.date() == signer_expiry
    assert parsed.certificates[1].not_valid_after_utc.date() == dt.date(2026, 11, 11)
    # Inside every certificate's validity the chain validates to the bundled NVIDIA RIM root…
    assert len(rim.verify_signing_chain(parsed, roots=rim_roots(), at=RIM_VALID)) == 4
    # …at the vectors' reference date (2026-11-21) the L4 signer and the L3 CA have expired.
    with pytest.raises(ChainError, match="expired"):
        rim.verify_signing_chain(parsed, roots=rim_roots(), at=NOW)


def test_vbios_rim_reference_value_matches_the_report_at_index_3(vectors, vbios_rim):
    ref = rim.parse(vbios_rim).measurements[3]
    block = spdm.parse(real_evidence(vectors).data).response.measurement(4)
    assert block.value in ref.alternatives  # RIM index 3 ↔ SPDM block 4 (0- vs 1-based)


def test_tampered_rim_fails_its_signature(vbios_rim):
    tampered = vbios_rim.replace(b'ns2:Hash0="c3f65ef79a', b'ns2:Hash0="c3f65ef79b', 1)
    assert tampered != vbios_rim
    rim.parse(tampered)  # still well-formed
    with pytest.raises(VerificationError, match="does not verify"):
        rim.verify_signature(tampered)


def test_unsigned_content_outside_the_document_is_refused(vbios_rim):
    wrapped = b"<Wrapper>" + vbios_rim + b"</Wrapper>"
    with pytest.raises((EvidenceFormatError, VerificationError)):
        rim.verify_signature(wrapped)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.replace(b"<!DOCTYPE", b"")[:100], "not well-formed"),
        (lambda d: b'<!DOCTYPE x [<!ENTITY e "x">]>' + d, "DOCTYPE"),
        (
            lambda d: d.replace(b'colloquialVersion="96.00.5E.00.01"', b'colloquialVersion="v1"'),
            "colloquialVersion",
        ),
        (lambda d: d.replace(b'alternatives="4"', b'alternatives="5"'), "Hash4 expected 96 hex digits"),
        (lambda d: d.replace(b'index="5"', b'index="4"'), "index 4 listed twice"),
        (lambda d: d.replace(b'size="48"', b'size="32"', 1), "@size expected 48"),
        (lambda d: d.replace(b'active="True"', b'active="yes"', 1), "@active expected True or False"),
    ],
)
def test_malformed_rims_are_format_errors(vbios_rim, mutate, message):
    with pytest.raises(EvidenceFormatError, match=message):
        rim.parse(mutate(vbios_rim))


# --- the verifier's RIM steps on the real files ---


def rim_checks(result):
    return {c.name: (c.passed, c.detail) for c in result.checks if c.name.startswith("rim")}


def test_real_rims_at_now_fail_on_expired_signers_and_say_so(vectors):
    trust = Trust(
        collateral={
            "rim:vbios": (vectors / VBIOS_RIM).read_bytes(),
            "rim:driver": (vectors / DRIVER_RIM_TEST).read_bytes(),
        }
    )
    result = NvidiaVerifier().verify(
        real_evidence(vectors), expected_report_data=REPORT_NONCE, trust=trust, at=NOW
    )
    checks = rim_checks(result)
    assert not result.ok
    assert checks["rim:vbios:signature"][0] and checks["rim:driver:signature"][0]
    assert not checks["rim:vbios:chain"][0] and "expired" in checks["rim:vbios:chain"][1]
    assert "HCC RIM L4 Signer" in checks["rim:vbios:chain"][1]
    assert checks["rim_vbios"] == (False, "no RIM for VBIOS 96.00.9F.00.01 (verified VBIOS RIMs given: none)")
    assert checks["rim_driver"] == (False, "no RIM for driver 550.90.07 (verified driver RIMs given: none)")
    # The device-side checks are unaffected.
    assert all(c.passed for c in result.checks if not c.name.startswith("rim"))


def test_real_rims_at_a_pinned_time_verify_but_do_not_describe_this_gpu(vectors):
    trust = Trust(collateral={"rim:vbios": (vectors / VBIOS_RIM).read_bytes()})
    result = NvidiaVerifier().verify(
        real_evidence(vectors), expected_report_data=REPORT_NONCE, trust=trust, at=RIM_VALID
    )
    checks = rim_checks(result)
    assert checks["rim:vbios:signature"][0] and checks["rim:vbios:chain"][0]
    assert checks["rim_vbios"] == (
        False,
        "no RIM for VBIOS 96.00.9F.00.01 (verified VBIOS RIMs given: 96.00.5E.00.01)",
    )
    assert checks["rim_driver"][0] is False
    assert not result.ok and result.claims["rim_status"] == "failed"


# --- comparison logic, with RIMs signed under a test-only root ---


def _cert(subject, issuer, key, issuer_key, ca):
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384())
    )


@pytest.fixture(scope="module")
def test_rim_pki():
    root_key, signer_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _cert("TEST RIM root", "TEST RIM root", root_key, root_key, True)
    signer = _cert("TEST RIM signer", "TEST RIM root", signer_key, root_key, False)
    return root, signer, signer_key


SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"


def make_rim(pki, version: str, refs: dict[int, list[bytes]], total: int = 64) -> bytes:
    from signxml import XMLSigner, methods

    root_cert, signer, key = pki
    doc = etree.Element(
        f"{{{SWID}}}SoftwareIdentity", nsmap={None: SWID, "ns2": SHA384}, name="GH100", tagId="t"
    )
    etree.SubElement(doc, f"{{{SWID}}}Meta", colloquialVersion=version)
    payload = etree.SubElement(doc, f"{{{SWID}}}Payload")
    for index in range(total):
        values = refs.get(index, [bytes(48)])
        res = etree.SubElement(
            payload,
            f"{{{SWID}}}Resource",
            type="Measurement",
            index=str(index),
            active=str(index in refs),
            alternatives=str(len(values)),
            name=f"Measurement_{index}",
            size="48",
        )
        for n, value in enumerate(values):
            res.set(f"{{{SHA384}}}Hash{n}", value.hex())
    signed = XMLSigner(
        method=methods.enveloped,
        signature_algorithm="ecdsa-sha384",
        digest_algorithm="sha384",
        c14n_algorithm="http://www.w3.org/2006/12/xml-c14n11",
    ).sign(
        doc,
        key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert=[c.public_bytes(serialization.Encoding.PEM).decode() for c in (signer, root_cert)],
    )
    return etree.tostring(signed)


@pytest.fixture(scope="module")
def report(vectors):
    return spdm.parse(real_evidence(vectors).data)


def verify_with(vectors, pki, rims: dict[str, bytes], **options):
    trust = Trust(
        roots={"nvidia-rim": pki[0].public_bytes(serialization.Encoding.PEM)},
        collateral={f"rim:{k}": v for k, v in rims.items()},
        options=options,
    )
    return NvidiaVerifier().verify(
        real_evidence(vectors), expected_report_data=REPORT_NONCE, trust=trust, at=NOW
    )


def _values(report, indices):
    return {i: [report.response.measurement(i + 1).value] for i in indices}


def test_matching_driver_and_vbios_rims_pass(vectors, test_rim_pki, report):
    vbios = make_rim(test_rim_pki, "96.00.9F.00.01", _values(report, range(0, 16)))
    driver_refs = _values(report, range(16, 40))
    driver_refs[20] = [bytes.fromhex("11" * 48), *driver_refs[20]]  # a second alternative
    driver = make_rim(test_rim_pki, "550.90.07", driver_refs)
    result = verify_with(vectors, test_rim_pki, {"a": vbios, "b": driver})
    assert result.ok, result.reason()
    checks = rim_checks(result)
    assert checks["rim_vbios"] == (True, "16 active measurements match the VBIOS RIM 96.00.9F.00.01")
    assert checks["rim_driver"] == (True, "24 active measurements match the driver RIM 550.90.07")
    assert checks["rim_overlap"][0]
    assert result.claims["rim_status"] == "matched"


def test_a_differing_measurement_is_named(vectors, test_rim_pki, report):
    refs = _values(report, range(0, 16))
    refs[5] = [bytes(48)]
    vbios = make_rim(test_rim_pki, "96.00.9F.00.01", refs)
    driver = make_rim(test_rim_pki, "550.90.07", _values(report, range(16, 40)))
    result = verify_with(vectors, test_rim_pki, {"a": vbios, "b": driver})
    assert not result.ok
    passed, detail = rim_checks(result)["rim_vbios"]
    assert not passed and detail.startswith("VBIOS RIM 96.00.9F.00.01: measurements differ at index 5 (")


def test_a_reference_for_a_missing_block_fails(vectors, test_rim_pki, report):
    refs = _values(report, range(0, 4))
    refs[64] = [bytes(48)]  # block 65 does not exist in the report
    vbios = make_rim(test_rim_pki, "96.00.9F.00.01", refs, total=65)
    result = verify_with(vectors, test_rim_pki, {"a": vbios})
    assert "64 (absent from the report)" in rim_checks(result)["rim_vbios"][1]


def test_overlapping_rims_are_rejected(vectors, test_rim_pki, report):
    vbios = make_rim(test_rim_pki, "96.00.9F.00.01", _values(report, range(0, 16)))
    driver = make_rim(test_rim_pki, "550.90.07", _values(report, range(10, 20)))
    result = verify_with(vectors, test_rim_pki, {"a": vbios, "b": driver})
    assert rim_checks(result)["rim_overlap"] == (
        False,
        "indices [10, 11, 12, 13, 14, 15] are active in both the driver and the VBIOS RIM",
    )


def test_rim_signed_outside_the_trusted_root_is_not_used(vectors, test_rim_pki, report):
    vbios = make_rim(test_rim_pki, "96.00.9F.00.01", _values(report, range(0, 16)))
    trust = Trust(collateral={"rim:a": vbios})  # bundled NVIDIA RIM root
    result = NvidiaVerifier().verify(
        real_evidence(vectors), expected_report_data=REPORT_NONCE, trust=trust, at=NOW
    )
    checks = rim_checks(result)
    assert checks["rim:a:signature"][0] and not checks["rim:a:chain"][0]
    assert checks["rim_vbios"][0] is False


def test_require_rims_fails_when_none_are_given(vectors, test_rim_pki):
    result = verify_with(vectors, test_rim_pki, {}, require_rims=True)
    checks = rim_checks(result)
    assert checks["rim_driver"][0] is False and checks["rim_vbios"][0] is False
    assert not result.ok
