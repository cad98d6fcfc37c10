"""The CA library: nonces, policy, CSR checks and issuance (no HTTP)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attestation
from attestation import binding
from attestation.evidence import Check, Evidence, Result
from attestation.mock.attester import MOCK_MRTD
from attestation.reference import platform_entry, reference_document
from certs.ca.authority import CLOCK_SKEW, EnrollmentRequest, Refusal, init_ca_dir, write_mock_reference
from certs.ca.nonce import NONCE_LEN, NonceError, NonceService
from certs.ca.policy import PolicyError, default_policy_text, load_policy
from certs.chain import verify_chain
from certs.csr import CsrError, build_csr, parse_csr
from certs.errors import CertsError, ChainError
from certs.extensions import decode_evidence_extension
from tests.ca_helpers import Cvm, make_ca, pin_hardware
from tests.vectors import vectors_dir


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mock_ca(tmp_path: Path, clock: Clock):
    return make_ca(tmp_path / "ca", allow_mock=True, clock=clock)


@pytest.fixture
def cvm() -> Cvm:
    return Cvm.new()


def _at(clock: Clock) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock.now, dt.UTC)


def _refused(ca, request: EnrollmentRequest) -> Refusal:
    with pytest.raises(Refusal) as info:
        ca.issue(request)
    return info.value


# --- issuance -------------------------------------------------------------------------------


def test_issued_leaf_certifies_the_csr_key_with_evidence_and_claims(mock_ca, cvm, clock, tmp_path):
    nonce, _ = mock_ca.nonces.issue()
    request = cvm.request(nonce)
    issued = mock_ca.issue(request)
    leaf, ca_cert = issued.chain
    assert ca_cert == mock_ca.cert
    assert (
        leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == cvm.spki
    )
    assert verify_chain(leaf, roots=[mock_ca.cert], at=_at(clock))[0] == leaf
    assert isinstance(ca_cert.public_key(), ec.EllipticCurvePublicKey)
    assert ca_cert.public_key().curve.name == "secp384r1"
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA384)

    ext = leaf.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cvm.key.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest

    policy = mock_ca.policy
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime == dt.timedelta(seconds=policy.validity_seconds) + CLOCK_SKEW
    assert leaf.serial_number.bit_length() == policy.serial_bits

    bundle = decode_evidence_extension(leaf)
    assert bundle["nonce"] == nonce
    assert [Evidence.from_cbor_obj(e) for e in bundle["evidence"]] == list(request.evidence)
    claims = bundle["claims"]
    policy_bytes = (tmp_path / "ca" / "policy.toml").read_bytes()
    assert claims["policy"] == "sha256:" + hashlib.sha256(policy_bytes).hexdigest()
    (result,) = claims["results"]
    assert result["type"] == "mock" and result["mock"] is True
    assert result["claims"]["mrtd"] == MOCK_MRTD.hex()
    assert result["claims"]["report_data"] == binding.report_data(cvm.spki, nonce).hex()


def test_issued_leaf_does_not_chain_to_another_ca(mock_ca, cvm, clock, tmp_path):
    other = make_ca(tmp_path / "other", allow_mock=True)
    nonce, _ = mock_ca.nonces.issue()
    leaf = mock_ca.issue(cvm.request(nonce)).certificate
    with pytest.raises(ChainError):
        verify_chain(leaf, roots=[other.cert], at=_at(clock))


def test_leaf_never_outlives_the_ca(tmp_path, cvm, clock):
    ca_dir = tmp_path / "ca"
    init_ca_dir(ca_dir, allow_mock=True, validity_days=1, now=_at(clock))
    from certs.ca.authority import CertificateAuthority

    ca = CertificateAuthority.load(ca_dir, clock=clock)
    clock.now += 86400 - 600  # ten minutes before the CA expires; policy validity is an hour
    nonce, _ = ca.nonces.issue()
    leaf = ca.issue(cvm.request(nonce)).certificate
    assert leaf.not_valid_after_utc == ca.cert.not_valid_after_utc


def test_ca_init_files_and_permissions(tmp_path):
    ca_dir = tmp_path / "ca"
    init_ca_dir(ca_dir, allow_mock=False)
    assert stat.S_IMODE(os.stat(ca_dir / "ca-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(ca_dir / "nonce.key").st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    with pytest.raises(PolicyError, match=r"expected reference = FILE .* or any_image = true; found neither"):
        load_policy(ca_dir / "policy.toml")  # fail closed: the operator pins images first
    pin_hardware(ca_dir)
    assert not load_policy(ca_dir / "policy.toml").allow_mock
    with pytest.raises(CertsError, match="refusing to overwrite"):
        init_ca_dir(ca_dir, allow_mock=True)


def test_loading_refuses_a_group_readable_key(tmp_path):
    from certs.ca.authority import CertificateAuthority

    init_ca_dir(tmp_path / "ca", allow_mock=False)
    os.chmod(tmp_path / "ca" / "ca-key.pem", 0o640)
    with pytest.raises(CertsError, match="chmod 600"):
        CertificateAuthority.load(tmp_path / "ca")


# --- nonces ---------------------------------------------------------------------------------


def test_replayed_nonce_is_refused(mock_ca, cvm):
    nonce, _ = mock_ca.nonces.issue()
    mock_ca.issue(cvm.request(nonce))
    refusal = _refused(mock_ca, Cvm.new().request(nonce))
    assert refusal.code == "nonce_replayed"
    assert "already used" in refusal.reason


def test_expired_nonce_is_refused(mock_ca, cvm, clock):
    nonce, expiry = mock_ca.nonces.issue()
    assert expiry == int(clock.now) + mock_ca.policy.nonce_ttl_seconds
    clock.now = expiry
    refusal = _refused(mock_ca, cvm.request(nonce))
    assert refusal.code == "nonce_expired"


def test_nonce_from_another_ca_is_refused(mock_ca, cvm, tmp_path):
    other = make_ca(tmp_path / "other", allow_mock=True)
    nonce, _ = other.nonces.issue()
    assert _refused(mock_ca, cvm.request(nonce)).code == "nonce_unknown"


def test_every_bit_flip_of_a_nonce_is_refused():
    service = NonceService(bytes(range(32)))
    nonce, _ = service.issue()
    service.check(nonce)
    for bit in range(NONCE_LEN * 8):
        forged = bytearray(nonce)
        forged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(NonceError) as info:
            service.check(bytes(forged))
        assert info.value.code == "nonce_unknown", bit


@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_not_a_nonce(data):
    service = NonceService(b"k" * 32)
    with pytest.raises(NonceError) as info:
        service.check(data)
    assert info.value.code == ("nonce_unknown" if len(data) == NONCE_LEN else "nonce_malformed")


def test_replicas_sharing_a_key_refuse_each_others_nonces(clock):
    key = os.urandom(32)
    a, b = NonceService(key, replica=1, clock=clock), NonceService(key, replica=2, clock=clock)
    nonce, _ = a.issue()
    with pytest.raises(NonceError) as info:
        b.redeem(nonce)
    assert info.value.code == "nonce_wrong_replica"  # so a nonce is redeemed once in the fleet
    a.redeem(nonce)
    with pytest.raises(NonceError, match="already used"):
        a.redeem(nonce)
    with pytest.raises(NonceError) as info:
        NonceService(os.urandom(32), clock=clock).redeem(nonce)
    assert info.value.code == "nonce_unknown"


def test_replay_cache_is_bounded_and_forgets_only_expired_nonces(clock):
    service = NonceService(os.urandom(32), ttl=10, max_outstanding=2, clock=clock)
    first, second, third = (service.issue()[0] for _ in range(3))
    service.redeem(first)
    service.redeem(second)
    with pytest.raises(NonceError) as info:
        service.redeem(third)
    assert info.value.code == "busy"
    clock.now += 10
    fresh, _ = service.issue()
    service.redeem(fresh)
    assert service.outstanding == 1


# --- binding and evidence -------------------------------------------------------------------


def test_evidence_binding_another_key_is_refused(mock_ca, cvm):
    nonce, _ = mock_ca.nonces.issue()
    thief = Cvm.new()
    request = EnrollmentRequest(csr=build_csr(thief.key), nonce=nonce, evidence=(cvm.evidence(nonce),))
    refusal = _refused(mock_ca, request)
    assert refusal.code == "binding_mismatch"
    assert "report_data" in refusal.reason


def test_evidence_binding_another_nonce_is_refused(mock_ca, cvm):
    nonce, _ = mock_ca.nonces.issue()
    old, _ = mock_ca.nonces.issue()
    request = EnrollmentRequest(csr=build_csr(cvm.key), nonce=nonce, evidence=(cvm.evidence(old),))
    assert _refused(mock_ca, request).code == "binding_mismatch"


def test_request_without_evidence_is_refused(mock_ca, cvm):
    nonce, _ = mock_ca.nonces.issue()
    request = EnrollmentRequest(csr=build_csr(cvm.key), nonce=nonce, evidence=())
    assert _refused(mock_ca, request).code == "evidence_missing"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_bit_flip_in_the_evidence_is_refused(mock_ca, cvm, data):
    nonce, _ = mock_ca.nonces.issue()
    good = cvm.evidence(nonce)
    bit = data.draw(st.integers(0, 1 << 16), label="bit") % (len(good.data) * 8)
    flipped = bytearray(good.data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    request = EnrollmentRequest(
        csr=build_csr(cvm.key), nonce=nonce, evidence=(Evidence("mock", bytes(flipped)),)
    )
    assert _refused(mock_ca, request).code in {"evidence_rejected", "binding_mismatch"}


def test_genuine_hardware_evidence_bound_elsewhere_is_refused(tmp_path, cvm):
    """A real SEV-SNP report (REPORT_DATA 0102030405…) cannot certify our key."""
    snp = vectors_dir() / "snp" / "go-sev-guest"
    evidence = Evidence(
        "sev-snp", (snp / "attestation.bin").read_bytes(), {"vcek": (snp / "vcek.testcer").read_bytes()}
    )
    mock_only = make_ca(tmp_path / "mock", allow_mock=True, policy=_mock_policy())
    nonce, _ = mock_only.nonces.issue()
    refusal = _refused(mock_only, EnrollmentRequest(build_csr(cvm.key), nonce, (evidence,)))
    assert refusal.code == "policy_refused" and "'sev-snp' is not allowed" in refusal.reason

    hw = make_ca(tmp_path / "hw", allow_mock=False)
    nonce, _ = hw.nonces.issue()
    refusal = _refused(hw, EnrollmentRequest(build_csr(cvm.key), nonce, (evidence,)))
    assert refusal.code in {"binding_mismatch", "evidence_rejected"}


class _FakeGpuVerifier:
    """Stands in for a GPU verifier: the evidence is the nonce the GPU signed."""

    def verify(self, evidence, *, expected_report_data, trust, at):
        same = evidence.data == expected_report_data
        checks = (Check("format", True, "fake"), Check("report_data", same, "gpu nonce"))
        claims = {
            "gpu": "fake",
            "driver_version": "0.0.0",
            "vbios_version": "00.00.00.00.00",
        }  # the mock GPU's
        return Result("mock-gpu", checks, claims, report_data=evidence.data, is_mock=True)


def test_gpu_evidence_is_bound_through_the_cpu_report_data(mock_ca, cvm, monkeypatch):
    monkeypatch.setattr(attestation, "verifier_for", _with_fake_gpu(attestation.verifier_for))
    monkeypatch.setattr("certs.ca.authority.verifier_for", attestation.verifier_for)
    nonce, _ = mock_ca.nonces.issue()
    gpu = Evidence("mock-gpu", binding.gpu_nonce(cvm.spki, nonce))
    cpu = cvm.evidence(nonce, other=(gpu,))
    issued = mock_ca.issue(EnrollmentRequest(build_csr(cvm.key), nonce, (gpu, cpu)))
    assert [r.type for r in issued.results] == ["mock-gpu", "mock"]

    nonce, _ = mock_ca.nonces.issue()
    gpu = Evidence("mock-gpu", binding.gpu_nonce(cvm.spki, nonce))
    unbound = cvm.evidence(nonce)  # CPU evidence that does not cover the GPU report
    refusal = _refused(mock_ca, EnrollmentRequest(build_csr(cvm.key), nonce, (gpu, unbound)))
    assert refusal.code == "binding_mismatch" and "(mock)" in refusal.reason

    nonce, _ = mock_ca.nonces.issue()
    refusal = _refused(mock_ca, EnrollmentRequest(build_csr(cvm.key), nonce, (gpu,)))
    assert refusal.code == "evidence_missing" and "only GPU" in refusal.reason


def _with_fake_gpu(real):
    def lookup(kind):
        return _FakeGpuVerifier() if kind == "mock-gpu" else real(kind)

    return lookup


# --- CSR ------------------------------------------------------------------------------------


def test_csr_with_a_bad_signature_is_refused(mock_ca, cvm):
    csr = x509.load_pem_x509_csr(build_csr(cvm.key))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-10] ^= 0x01  # inside the ECDSA signature value
    nonce, _ = mock_ca.nonces.issue()
    refusal = _refused(mock_ca, EnrollmentRequest(bytes(der), nonce, (cvm.evidence(nonce),)))
    assert refusal.code == "csr_invalid"
    assert "signature" in refusal.reason
    # the nonce was not spent on a request that failed before redemption
    mock_ca.issue(cvm.request(nonce))


def test_every_bit_flip_of_a_csr_is_refused(cvm):
    der = x509.load_pem_x509_csr(build_csr(cvm.key)).public_bytes(serialization.Encoding.DER)
    parse_csr(der)
    for bit in range(len(der) * 8):
        flipped = bytearray(der)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CsrError):
            parse_csr(bytes(flipped))


@given(st.binary(max_size=600))
def test_garbage_is_not_a_csr(data):
    with pytest.raises(CsrError):
        parse_csr(data)


def test_csr_with_a_weak_key_type_is_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CsrError, match="not accepted"):
        parse_csr(csr)


# --- policy ---------------------------------------------------------------------------------


def _mock_policy(extra: str = "", mock_section: str = "measurements = {}\n") -> str:
    return (
        '[attestation]\nallow_mock = true\nallowed_types = ["mock"]\nreference = "reference.json"\n'
        + extra
        + "\n[tee.mock]\n"
        + mock_section
    )


def test_ca_without_allow_mock_refuses_mock_evidence(tmp_path, cvm):
    ca = make_ca(tmp_path / "ca", allow_mock=False)
    nonce, _ = ca.nonces.issue()
    refusal = _refused(ca, cvm.request(nonce))
    assert refusal.code == "policy_refused"
    assert "'mock' is not allowed" in refusal.reason


def test_unexpected_measurement_is_refused_with_its_name(tmp_path, cvm):
    policy = _mock_policy(mock_section=f'measurements = {{ mrtd = ["{"ab" * 48}"] }}\n')
    ca = make_ca(tmp_path / "ca", allow_mock=True, policy=policy)
    nonce, _ = ca.nonces.issue()
    refusal = _refused(ca, cvm.request(nonce))
    assert refusal.code == "policy_refused"
    assert "mock: mrtd" in refusal.reason


def test_pinned_measurement_and_exact_claims_are_accepted(tmp_path, cvm):
    section = f'measurements = {{ mrtd = ["{MOCK_MRTD.hex().upper()}"] }}\nequals = {{ debug = false }}\n'
    ca = make_ca(tmp_path / "ca", allow_mock=True, policy=_mock_policy(mock_section=section))
    nonce, _ = ca.nonces.issue()
    assert ca.issue(cvm.request(nonce)).certificate


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ("measurements = {}\nequals = { debug = true }\n", "debug is False, expected True"),
        ('measurements = {}\nequals = { tee = "tdx" }\n', "tee is 'mock', expected 'tdx'"),
        ('measurements = {}\ntcb_status = ["UpToDate"]\n', "TCB status None"),
        ("measurements = {}\nminimum = { svn = 2 }\n", "svn is (absent)"),
    ],
)
def test_claims_outside_the_policy_are_refused(tmp_path, cvm, section, needle):
    ca = make_ca(tmp_path / "ca", allow_mock=True, policy=_mock_policy(mock_section=section))
    nonce, _ = ca.nonces.issue()
    refusal = _refused(ca, cvm.request(nonce))
    assert refusal.code == "policy_refused"
    assert needle in refusal.reason


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[attestation]\nallowed_types = []\n", "at least one evidence type"),
        ('[attestation]\nallowed_types = ["mock"]\n[tee.mock]\nmeasurements = {}\n', "allow_mock is false"),
        ('[attestation]\nallowed_types = ["tdx"]\n', "missing ['tdx']"),
        ('[attestation]\nallowed_types = ["tdx"]\n[tee.tdx]\n', "missing measurements"),
        ('[attestation]\nallowed_types = ["tdx"]\nfoo = 1\n[tee.tdx]\nmeasurements = {}\n', "unknown keys"),
        (
            '[attestation]\nallowed_types = ["tdx"]\n[tee.tdx]\nmeasurements = {}\nmrtd = "x"\n',
            "unknown keys",
        ),
        ('[attestation]\nallowed_types = ["tdx"]\n[tee.tdx]\nmeasurements = { mrtd = ["zz"] }\n', "hex"),
        ('[attestation]\nallowed_types = ["sgx"]\n', "unknown evidence type 'sgx'"),
        ('[attestation]\nallowed_types = ["nvidia"]\n[tee.nvidia]\nmeasurements = {}\n', "CPU TEE"),
        ('[issuance]\nserial_bits = 200\n[attestation]\nallowed_types = ["tdx"]\n', "64..159"),
        ('[issuance]\nvalidity_seconds = "1h"\n', "expected int"),
        ("[bogus]\n", "unknown keys ['bogus']"),
        ("not toml = = 1", "not valid TOML"),
    ],
)
def test_malformed_policies_are_rejected_with_a_reason(tmp_path, text, needle):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("allow_mock", [True, False])
def test_default_policy_loads_and_matches_the_mock_flag(tmp_path, allow_mock):
    path = tmp_path / "policy.toml"
    path.write_text(default_policy_text(allow_mock=allow_mock))
    if allow_mock:  # `ca init --allow-mock` writes the mock platform's reference values beside it
        with pytest.raises(CertsError, match=r"attestation\.reference: .*reference\.json: cannot read"):
            load_policy(path)
        write_mock_reference(tmp_path / "reference.json")
    else:  # the hardware policy pins nothing yet: it does not load until the operator says what
        with pytest.raises(PolicyError, match="found neither"):
            load_policy(path)
        path.write_text(path.read_text().replace("# any_image = true", "any_image = true"))
    policy = load_policy(path)
    assert (policy.reference is not None) is allow_mock
    assert policy.any_image is not allow_mock
    assert policy.allow_mock is allow_mock
    assert ("mock" in policy.allowed_types) is allow_mock
    assert {"tdx", "sev-snp", "nvidia"} <= policy.allowed_types
    assert policy.tee["tdx"].tcb_status == ("UpToDate",)


# --- the default hardware policy against real evidence -------------------------------------

REFERENCE = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)


def _real_result(kind: str, evidence: Evidence):
    """Verified claims of real evidence (its binding is to someone else's key, so not checked)."""
    verifier = attestation.verifier_for(kind)
    return verifier.verify(evidence, expected_report_data=None, trust=attestation.Trust(), at=REFERENCE)


@pytest.fixture
def hw_policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(default_policy_text(allow_mock=False).replace("# any_image = true", "any_image = true"))
    return load_policy(path)


def test_default_policy_refuses_a_real_tdx_quote_with_the_debug_bit(hw_policy):
    quote = (vectors_dir() / "tdx" / "trustee" / "tdx_quote_4.dat").read_bytes()  # td_attributes DEBUG
    reasons = hw_policy.validate("tdx", _real_result("tdx", Evidence("tdx", quote)))
    assert "tdx: debug is True, expected False" in reasons


def test_default_policy_names_real_tdx_claims_and_wants_a_tcb_verdict(hw_policy):
    quote = (vectors_dir() / "tdx" / "trustee" / "tdx_quote_6.dat").read_bytes()  # not debug
    result = _real_result("tdx", Evidence("tdx", quote))
    assert result.claims["debug"] is False
    # no collateral given: the TCB was not evaluated, which neither the appraisal nor the
    # default policy's [tee.tdx] table accepts, even with any_image
    assert hw_policy.validate("tdx", result) == [
        "tdx: tcb: TCB not evaluated: give the Intel collateral (--collateral DIR)",
        "tdx: TCB status None is not one of UpToDate",
    ]


def test_default_policy_refuses_a_real_snp_report_whose_guest_policy_allows_debug(hw_policy):
    snp = vectors_dir() / "snp" / "go-sev-guest"
    evidence = Evidence(
        "sev-snp", (snp / "attestation.bin").read_bytes(), {"vcek": (snp / "vcek.testcer").read_bytes()}
    )
    reasons = hw_policy.validate("sev-snp", _real_result("sev-snp", evidence))
    debug = "sev-snp: debug: a debug TEE: the host can read its memory; refused unless --allow-debug"
    assert debug in reasons
    assert "sev-snp: policy.debug is True, expected False" in reasons


def test_pinned_snp_measurement_and_minimum_tcb_on_a_real_report(tmp_path):
    snp = vectors_dir() / "snp" / "virtee-sev"
    raw = (snp / "report_milan.bin").read_bytes()
    evidence = Evidence("sev-snp", raw, {"vcek": (snp / "vcek_milan.der").read_bytes()})
    result = _real_result("sev-snp", evidence)
    measurement = result.claims["measurement"]
    assert measurement.startswith("7a1e5c266c0108db")  # MANIFEST: report_milan MEASUREMENT
    entry = {**platform_entry("report-milan", result), "min_tcb": {"snp": 8, "microcode": 115}}
    (tmp_path / "reference.json").write_bytes(reference_document([entry]))
    path = tmp_path / "policy.toml"
    base = (
        '[attestation]\nallowed_types = ["sev-snp"]\nreference = "reference.json"\n'
        '[tee.sev-snp]\nequals = { "policy.debug" = false }\n'
    )
    path.write_text(
        base + f'measurements = {{ measurement = ["{measurement}"] }}\n'
        'minimum = { "reported_tcb.snp" = 8, "reported_tcb.microcode" = 115 }\n'
    )
    assert load_policy(path).validate("sev-snp", result) == []
    path.write_text(
        base + f'measurements = {{ measurement = ["{measurement}"] }}\n'
        'minimum = { "reported_tcb.snp" = 9 }\n'
    )
    assert load_policy(path).validate("sev-snp", result) == [
        "sev-snp: reported_tcb.snp is 8, expected at least 9"
    ]
    entry["min_tcb"] = {"snp": 9}  # the reference values' own minimum TCB, appraised
    (tmp_path / "reference.json").write_bytes(reference_document([entry]))
    assert load_policy(path).validate("sev-snp", result)[0] == "sev-snp: tcb: snp 8 < 9"
