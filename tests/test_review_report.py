"""Red-team tests of report verification: forged reports that must be rejected, and hostile
bytes that must be rejected without a traceback.

Each forged report is well signed and bound to its own (mock) evidence; only the one thing
under test is wrong. tests/review_helpers.py explains how they are built.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.mock import format as mockfmt
from attestation.mock.root import private_key as mock_root_key
from loader.boot.keys import EphemeralKey
from loader.errors import ReportError
from loader.report import cose
from loader.report.document import CONTENT_TYPE, parse_report, utc_text
from loader.report.replay import replay
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.conftest import cli
from tests.review_helpers import base_payload, ca_certificate, checks_of, der, forge, leaf_certificate


@pytest.fixture(scope="module")
def template(demo_report: tuple[Path, bytes]) -> dict[str, Any]:
    return base_payload(demo_report[1])


def test_forged_baseline_verifies_only_with_allow_mock(template: dict[str, Any]) -> None:
    raw = forge(template)
    assert verify_report(raw, allow_mock=True, appraisal=MOCK).ok
    refused = verify_report(raw, appraisal=MOCK)
    assert not refused.ok
    assert "mock_allowed" in refused.reason() or "mock" in refused.reason()


# --- replay must not vouch for a report whose evidence does not verify ---------------------


def _junk_tdx(report_data: bytes) -> list[dict[str, Any]]:
    return [{"type": "tdx", "data": b"not a quote", "aux": {}}]


def _as_tdx(payload: dict[str, Any]) -> None:
    payload["tee"] = "tdx"


def test_replay_rejects_a_report_without_valid_evidence(template: dict[str, Any], tmp_path: Path) -> None:
    raw = forge(template, evidence=_junk_tdx, mutate=_as_tdx)
    assert not verify_report(raw).ok
    check, _ = replay(raw, [])
    assert not check.ok, "replay accepted a report whose evidence is junk"


def test_replay_rejects_mock_evidence_unless_allowed(template: dict[str, Any]) -> None:
    raw = forge(template)
    assert not replay(raw, [], appraisal=MOCK)[0].ok
    assert replay(raw, [], allow_mock=True, appraisal=MOCK)[0].ok
    unpinned = replay(raw, [], allow_mock=True)[0]
    assert not unpinned.ok and "unpinned" in unpinned.reason()


# --- hostile CBOR must become a format failure, never an exception --------------------------

MIME = b"\xd8\x24" + cbor2.dumps("Content-Type: text/plain\n\nx")  # tag 36: decodes, cannot re-encode
CYCLIC = bytes.fromhex("d81c81d81d00")  # tag 28/29: an array that contains itself


def _sign1(protected_raw: bytes, payload: bytes, key: EphemeralKey) -> bytes:
    sig = key.sign_raw(cose.sig_structure(protected_raw, payload))
    return cbor2.dumps(cbor2.CBORTag(18, [protected_raw, {}, payload, sig]), canonical=True)


@pytest.mark.parametrize("blob", [MIME, CYCLIC], ids=["mime", "cyclic"])
def test_hostile_cbor_envelope_is_a_format_failure(blob: bytes) -> None:
    result = verify_report(blob)
    assert checks_of(result)["format"][0] is False


@pytest.mark.parametrize("blob", [MIME, CYCLIC], ids=["mime", "cyclic"])
def test_hostile_cbor_payload_is_a_format_failure(blob: bytes) -> None:
    key = EphemeralKey()
    protected = cbor2.dumps({1: -35, 33: b"x"}, canonical=True)
    result = verify_report(_sign1(protected, blob, key))
    assert checks_of(result)["format"][0] is False


@pytest.mark.parametrize("blob", [MIME, CYCLIC], ids=["mime", "cyclic"])
def test_hostile_cbor_protected_header_is_a_format_failure(blob: bytes) -> None:
    result = verify_report(_sign1(blob, cbor2.dumps({}), EphemeralKey()))
    assert checks_of(result)["format"][0] is False


def test_cli_report_commands_reject_hostile_cbor_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mime.cbor"
    path.write_bytes(MIME)
    for args in (
        ("report", "verify", path),
        ("report", "show", path),
        ("replay", path, "--input", "engine=x"),
    ):
        res = cli(*args)
        assert res.returncode == 1, (args, res.stderr)
        assert "Traceback" not in res.stderr
        said = res.stdout + res.stderr  # verify and replay print their result on stdout
        assert "not in deterministic CBOR" in said or "cannot be re-encoded" in said


def test_protected_header_must_be_canonical_with_integer_labels(
    template: dict[str, Any], demo_report: tuple[Path, bytes]
) -> None:
    real = parse_report(forge(template))
    chain = real.envelope.protected[33]
    key = EphemeralKey()
    # `true` hashes and compares equal to 1: {true: -35} would pass as an alg header.
    bool_label = cbor2.dumps({True: -35, 3: CONTENT_TYPE, 33: chain})
    with pytest.raises(ReportError):
        cose.decode_sign1(_sign1(bool_label, real.envelope.payload, key))
    # The same map, non-canonically encoded (alg as a 2-byte integer).
    canonical = cbor2.dumps({1: -35, 3: CONTENT_TYPE, 33: chain}, canonical=True)
    assert canonical[1:4] == b"\x01\x38\x22"
    loose = canonical[:2] + b"\x39\x00\x22" + canonical[4:]
    assert cbor2.loads(loose) == cbor2.loads(canonical)
    with pytest.raises(ReportError):
        cose.decode_sign1(_sign1(loose, real.envelope.payload, key))


# --- mock evidence with an out-of-range creation time ---------------------------------------


def _mock_created(created: int):  # type: ignore[no-untyped-def]
    def make(report_data: bytes) -> list[dict[str, Any]]:
        regs = {name: bytes(48) for name in mockfmt.REGISTERS}
        payload = mockfmt.encode_payload(report_data, regs, created)
        sig = mock_root_key().sign(payload, ec.ECDSA(hashes.SHA384()))
        return [{"type": "mock", "data": mockfmt.encode(payload, sig), "aux": {}}]

    return make


@pytest.mark.parametrize("created", [2**70, -(2**70), 10**15])
def test_mock_evidence_with_absurd_time_is_rejected_not_raised(
    template: dict[str, Any], created: int
) -> None:
    result = verify_report(forge(template, evidence=_mock_created(created)), allow_mock=True, appraisal=MOCK)
    assert not result.ok
    assert "evidence[0]" in result.reason()


# --- the signer's certificate chain ---------------------------------------------------------


def test_self_issued_leaf_that_is_a_ca_is_rejected(template: dict[str, Any]) -> None:
    raw = forge(
        template, chain=lambda key, bundle, at: [der(leaf_certificate(key.private, bundle, at, ca=True))]
    )
    result = verify_report(raw, allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["certificate"][0] is False


def test_self_issued_chain_with_extra_certificates_is_rejected(template: dict[str, Any]) -> None:
    stranger, _ = ca_certificate("stranger")

    def chain(key: EphemeralKey, bundle: dict[str, Any], at: dt.datetime) -> list[bytes]:
        return [der(leaf_certificate(key.private, bundle, at)), der(stranger)]

    result = verify_report(forge(template, chain=chain), allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["certificate"][0] is False


def test_ca_chain_with_unrelated_extra_certificate_is_rejected(template: dict[str, Any]) -> None:
    ca, ca_key = ca_certificate()
    stranger, _ = ca_certificate("stranger")

    def chain(key: EphemeralKey, bundle: dict[str, Any], at: dt.datetime) -> list[bytes]:
        return [der(leaf_certificate(key.private, bundle, at, issuer=(ca.subject, ca_key))), der(stranger)]

    good = forge(template, chain=lambda k, b, at: chain(k, b, at)[:1])
    assert verify_report(good, ca=[ca], allow_mock=True, appraisal=MOCK).ok
    result = verify_report(forge(template, chain=chain), ca=[ca], allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["certificate"][0] is False


def test_ca_issued_leaf_that_is_a_ca_is_rejected(template: dict[str, Any]) -> None:
    ca, ca_key = ca_certificate()
    raw = forge(
        template,
        chain=lambda key, bundle, at: [
            der(leaf_certificate(key.private, bundle, at, ca=True, issuer=(ca.subject, ca_key)))
        ],
    )
    result = verify_report(raw, ca=[ca], allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["certificate"][0] is False


# --- timestamps -----------------------------------------------------------------------------


def _times(**moments: dt.datetime):  # type: ignore[no-untyped-def]
    def mutate(payload: dict[str, Any]) -> None:
        for name, moment in moments.items():
            payload["timestamps"][name] = utc_text(moment)

    return mutate


def test_timestamps_out_of_order_are_rejected(template: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    raw = forge(template, mutate=_times(started=now + dt.timedelta(hours=1), finished=now))
    result = verify_report(raw, allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["timestamps"][0] is False


def test_naive_evaluation_time_is_taken_as_utc(template: dict[str, Any], vectors: Path) -> None:
    quote = (vectors / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes()
    raw = forge(
        template,
        evidence=lambda rd: [{"type": "tdx", "data": quote, "aux": {}}],
        mutate=_as_tdx,
    )
    naive = dt.datetime(2023, 7, 1)
    result = verify_report(raw, at=naive)
    aware = verify_report(raw, at=naive.replace(tzinfo=dt.UTC))
    assert result.checks == aware.checks
    assert checks_of(result)["evidence[0]"] == (False, checks_of(aware)["evidence[0]"][1])
    assert "report_data" in checks_of(result)["evidence[0]"][1]


# --- payload parts that were typed only as "a map" or "an int" ------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.__setitem__("workload", {}),
        lambda p: p["workload"].__setitem__("output", {"digest": 1}),
        lambda p: p.__setitem__("wipe", {"files": "x"}),
        lambda p: p["hashing"].__setitem__("bytes", 2**200),
        lambda p: p["inputs"][0].__setitem__("size", -(2**100)),
    ],
    ids=["workload-empty", "output-type", "wipe-type", "huge-int", "huge-negative"],
)
def test_malformed_payload_parts_are_format_errors(
    template: dict[str, Any], tmp_path: Path, change: Any
) -> None:
    raw = forge(template, mutate=change)
    with pytest.raises(ReportError):
        parse_report(raw)
    path = tmp_path / "r.cbor"
    path.write_bytes(raw)
    shown = cli("report", "show", path, "--json")
    assert shown.returncode == 1 and "Traceback" not in shown.stderr


# --- checked and found sound: kept as regressions -------------------------------------------


def test_two_cpu_evidences_are_rejected(template: dict[str, Any]) -> None:
    def two(report_data: bytes) -> list[dict[str, Any]]:
        return _mock_created(1)(report_data) * 2

    result = verify_report(forge(template, evidence=two), allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["evidence"][0] is False


def test_empty_evidence_is_rejected(template: dict[str, Any]) -> None:
    result = verify_report(forge(template, evidence=lambda rd: []), allow_mock=True, appraisal=MOCK)
    assert checks_of(result)["evidence"][0] is False


def test_evidence_for_another_key_is_rejected(template: dict[str, Any]) -> None:
    other = EphemeralKey()
    from attestation import binding
    from attestation.mock.attester import MockAttester

    def for_other(report_data: bytes) -> list[dict[str, Any]]:
        rd = binding.report_data(other.spki, bytes(32))
        return [MockAttester().collect(rd).to_cbor_obj()]

    result = verify_report(forge(template, evidence=for_other), allow_mock=True, appraisal=MOCK)
    assert not result.ok and "report_data" in result.reason()
