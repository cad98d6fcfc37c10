"""Nothing pins the platform unless a verifier says so (issue 14): reference values, fail closed.

A genuine (mock) CVM running another image produces evidence that verifies; every consumer of
that evidence (report verify, replay, grant create, output open) must refuse it unless its
measurements are in the reference values, refuse it when no reference values are given, and
accept it with matching values or the explicit --any-image (which its output repeats). A debug
TEE is refused everywhere unless --allow-debug.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation import Evidence, Trust
from attestation.mock import format as mockfmt
from attestation.mock.attester import reference_entry
from attestation.mock.root import private_key
from attestation.reference import (
    Appraisal,
    ReferenceError,
    appraise,
    load_reference,
    parse_reference,
    platform_entry,
    reference_document,
)
from attestation.tdx.verifier import TdxVerifier
from tests.conftest import cli
from tests.review_helpers import base_payload, forge
from tests.tdx_helpers import go_v4_collateral, quote_bytes

OTHER_IMAGE = {**reference_entry("other-image"), "values": {"mrtd": ["ab" * 48], "rtmr0": ["00" * 48]}}
OTHER_IMAGE["values"].update(rtmr1=["00" * 48], rtmr2=["00" * 48])
VALUES = dict(OTHER_IMAGE["values"])


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `demo --parties` run: report, sealed output, CVM certificate, keys, reference values."""
    workdir = tmp_path_factory.mktemp("appraise") / "demo"
    done = cli("demo", "--parties", "--workdir", workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    (workdir / "wrong.json").write_bytes(reference_document([OTHER_IMAGE]))
    (workdir / "fleet.json").write_bytes(reference_document([OTHER_IMAGE, reference_entry("this-image")]))
    return workdir


PINNING = {
    "matching": (["--reference", "reference.json"], 0),
    "allowed set": (["--reference", "fleet.json"], 0),
    "another image": (["--reference", "wrong.json"], 1),
    "nothing pinned": ([], 1),
    "any image": (["--any-image"], 0),
}


def _commands(workdir: Path) -> dict[str, list[str]]:
    sealed = str(next((workdir / "output").glob("*/output.sealed")))
    return {
        "report verify": ["report", "verify", "report.cbor", "--allow-mock"],
        "replay": [
            "replay",
            "report.cbor",
            "--allow-mock",
            "--partial",
            "--input",
            "dataset:lab=parties/lab/data",
        ],
        "grant create": [
            "grant",
            "create",
            "--cert",
            "cvm-cert.pem",
            "--dataset-key",
            "parties/lab/dataset.key",
            "--policy",
            "approved.json",
            "--out",
            "GRANT",
            "--allow-mock",
        ],
        "output open": [
            "output",
            "open",
            sealed,
            "--key",
            "parties/order-owner/key.pem",
            "--out",
            "OPENED",
            "--report",
            "report.cbor",
            "--allow-mock",
        ],
    }


@pytest.mark.parametrize("command", ["report verify", "replay", "grant create", "output open"])
def test_every_consumer_appraises_the_platform(parties: Path, tmp_path: Path, command: str) -> None:
    for case, (flags, expected) in PINNING.items():
        args = [a.replace("GRANT", str(tmp_path / f"{case}.grant")) for a in _commands(parties)[command]]
        args = [a.replace("OPENED", str(tmp_path / case.replace(" ", "-"))) for a in args]
        done = cli(*args, *flags, cwd=parties)
        text = done.stdout + done.stderr  # results on stdout, diagnostics on stderr
        assert done.returncode == expected, (command, case, text)
        last = text.strip().splitlines()[-1]
        if case == "another image":
            assert "matches no mock platform: 'other-image': mrtd" in text, (command, last)
        if case == "nothing pinned":
            assert "mrtd, rtmr0, rtmr1, rtmr2 unpinned" in text, (command, last)
        if case == "any image":
            assert "ANY IMAGE ACCEPTED" in text, (command, last)
    if command == "grant create":
        assert not (tmp_path / "another image.grant").exists()
    if command == "output open":
        assert not (tmp_path / "another-image").exists() and (tmp_path / "matching").is_dir()


def test_report_verify_json_repeats_the_any_image_choice(parties: Path) -> None:
    done = cli("report", "verify", "report.cbor", "--allow-mock", "--any-image", "--json", cwd=parties)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["appraisal"] == {
        "reference": None,
        "reference_digest": None,
        "any_image": True,
        "allow_debug": False,
    }
    assert "ANY IMAGE ACCEPTED" in {c["name"]: c["detail"] for c in out["checks"]}["evidence[0].reference"]


def test_output_open_refuses_a_report_signed_without_evidence(parties: Path, tmp_path: Path) -> None:
    """A report signed by some key, naming the attacker's sealed file: its signature is fine,
    its evidence does not bind the key. output open --report runs the full verification."""
    template = base_payload((parties / "report.cbor").read_bytes())

    def strip(payload: dict) -> None:  # type: ignore[type-arg]
        payload["evidence"] = []

    (tmp_path / "forged.cbor").write_bytes(forge(template, mutate=strip))
    args = _commands(parties)["output open"]
    args = [str(tmp_path / "forged.cbor") if a == "report.cbor" else a for a in args]
    args = [str(tmp_path / "out") if a == "OPENED" else a for a in args]
    done = cli(*args, "--reference", "reference.json", cwd=parties)
    assert done.returncode == 1 and "does not verify" in done.stderr
    assert not (tmp_path / "out").exists()


def test_signed_reference_values(parties: Path, tmp_path: Path) -> None:
    from loader.report.partykeys import generate, write_public
    from loader.report.signing import sign_policy

    publisher = generate("p384")
    write_public(publisher.public_key(), tmp_path / "pub.pem")
    raw = (parties / "reference.json").read_bytes()
    now = dt.datetime.now(dt.UTC)
    (tmp_path / "ref.sig").write_bytes(
        sign_policy(raw, publisher, issued=now, expires=now + dt.timedelta(days=1))
    )
    signed = [
        "--reference-signer",
        f"vendor={tmp_path / 'pub.pem'}",
        "--reference-signature",
        str(tmp_path / "ref.sig"),
    ]
    base = ["report", "verify", "report.cbor", "--allow-mock"]
    assert cli(*base, "--reference", "reference.json", *signed, cwd=parties).returncode == 0
    (tmp_path / "edited.json").write_bytes(raw.replace(b'"demo-mock"', b'"edited"'))
    bad = cli(*base, "--reference", str(tmp_path / "edited.json"), *signed, cwd=parties)
    assert bad.returncode == 1 and "signature does not verify" in bad.stderr


# --- the format --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"format": "x", "platforms": [OTHER_IMAGE]}, "format: expected"),
        ({"format": "trusted-loader/reference-values/v1", "platforms": []}, "platforms: expected a list"),
        ({"platforms": [OTHER_IMAGE]}, "exactly format and platforms"),
        ([{**OTHER_IMAGE, "values": {"mrtd": ["ab" * 48]}}], r"must pin rtmr0, rtmr1, rtmr2"),
        (
            [{**OTHER_IMAGE, "values": {**OTHER_IMAGE["values"], "mrtdd": ["00"]}}],
            "unknown mock claim 'mrtdd'",
        ),
        ([{**OTHER_IMAGE, "values": {**OTHER_IMAGE["values"], "mrtd": ["zz"]}}], "expected hex strings"),
        ([{**OTHER_IMAGE, "values": {**OTHER_IMAGE["values"], "mrtd": []}}], "expected a list of 1"),
        ([{**OTHER_IMAGE, "tcb_status": ["UpToDate"]}], "only tdx entries"),
        ([{**OTHER_IMAGE, "debug": True}], "unknown field 'debug'"),
        ([OTHER_IMAGE, OTHER_IMAGE], "two entries share a name"),
    ],
)
def test_malformed_reference_values_are_named(doc: object, message: str) -> None:
    if isinstance(doc, list):
        doc = {"format": "trusted-loader/reference-values/v1", "platforms": doc}
    with pytest.raises(ReferenceError, match=message):
        parse_reference(json.dumps(doc).encode(), "ref.json")


def test_duplicate_fields_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"format": "trusted-loader/reference-values/v1", "format": "x", "platforms": []}')
    with pytest.raises(ReferenceError, match="duplicate field 'format'"):
        load_reference(path)


# --- debug TEEs --------------------------------------------------------------------------------


def _debug_quote_result():  # type: ignore[no-untyped-def]
    """trustee's tdx_quote_4.dat: genuine, UpToDate at 2023-07-01, TD_ATTRIBUTES.DEBUG set."""
    trust = Trust(collateral=go_v4_collateral())
    result = TdxVerifier().verify(
        Evidence("tdx", quote_bytes("trustee_4")),
        expected_report_data=None,
        trust=trust,
        at=dt.datetime(2023, 7, 1, tzinfo=dt.UTC),
    )
    assert result.ok and result.tcb_status == "UpToDate" and result.claims["debug"] is True
    return result


def test_trustees_debug_quote_is_refused_unless_allowed() -> None:
    result = _debug_quote_result()
    pinned = parse_reference(reference_document([platform_entry("trustee-debug-td", result)]), "ref")
    for appraisal in (Appraisal(pinned), Appraisal(any_image=True)):
        failed = {c.name: c.detail for c in appraise(result, appraisal) if not c.passed}
        assert list(failed) == ["debug"] and "host can read its memory" in failed["debug"]
        allowed = Appraisal(appraisal.reference, any_image=appraisal.any_image, allow_debug=True)
        assert all(c.passed for c in appraise(result, allowed))


def test_hardware_evidence_without_tcb_evaluation_is_not_verified() -> None:
    result = TdxVerifier().verify(
        Evidence("tdx", quote_bytes("trustee_4")),
        expected_report_data=None,
        trust=Trust(),
        at=dt.datetime(2023, 7, 1, tzinfo=dt.UTC),
    )
    assert result.ok and result.tcb_status is None
    failed = {c.name: c.detail for c in appraise(result, Appraisal(any_image=True, allow_debug=True))}
    assert "TCB not evaluated" in failed["tcb"]


def _debug_mock_evidence(report_data: bytes) -> list[dict]:  # type: ignore[type-arg]
    registers = {name: bytes(48) for name in mockfmt.REGISTERS}
    registers["mrtd"] = bytes.fromhex(reference_entry()["values"]["mrtd"][0])  # type: ignore[index]
    payload = cbor2.dumps(
        {
            "mock": True,
            "tee": "mock",
            "report_data": report_data,
            "registers": registers,
            "debug": True,
            "created": int(dt.datetime.now(dt.UTC).timestamp()),
        },
        canonical=True,
    )
    signature = private_key().sign(payload, ec.ECDSA(hashes.SHA384()))
    return [{"type": "mock", "data": mockfmt.encode(payload, signature), "aux": {}}]


def test_a_debug_tee_report_is_refused_by_report_verify(parties: Path, tmp_path: Path) -> None:
    template = base_payload((parties / "report.cbor").read_bytes())
    path = tmp_path / "debug.cbor"
    path.write_bytes(forge(template, evidence=_debug_mock_evidence))
    base = ["report", "verify", str(path), "--allow-mock", "--reference", "reference.json", "--json"]
    refused = json.loads(cli(*base, cwd=parties).stdout)
    failed = {c["name"]: c["detail"] for c in refused["checks"] if not c["passed"]}
    assert "debug TEE" in failed["evidence[0].debug"]
    allowed = json.loads(cli(*base, "--allow-debug", cwd=parties).stdout)
    failed = {c["name"]: c["detail"] for c in allowed["checks"] if not c["passed"]}
    assert "evidence[0].debug" not in failed  # the verifier allows it; the parties' list does not
    assert "the approved list forbids it" in failed["evidence[0].debug_consent"]


# --- the CA appraises with the same module and format ------------------------------------------


def _ca_policy(tmp_path: Path, kind: str, platforms: list, extra: str = ""):  # type: ignore[no-untyped-def]
    from certs.ca.policy import load_policy

    (tmp_path / "reference.json").write_bytes(reference_document(platforms))
    mock = "true" if kind == "mock" else "false"
    (tmp_path / "policy.toml").write_text(
        f'[attestation]\nallow_mock = {mock}\nallowed_types = ["{kind}"]\nreference = "reference.json"\n'
        f"{extra}[tee.{kind}]\nmeasurements = {{}}\n"
    )
    return load_policy(tmp_path / "policy.toml")


def test_the_ca_refuses_another_image_and_a_debug_td(tmp_path: Path) -> None:
    from attestation import binding
    from attestation.mock.attester import MockAttester
    from attestation.mock.verifier import MockVerifier

    rd = binding.report_data(b"spki", bytes(32))
    mock = MockVerifier().verify(
        MockAttester().collect(rd),
        expected_report_data=rd,
        trust=Trust(allow_mock=True),
        at=dt.datetime.now(dt.UTC),
    )
    refused = _ca_policy(tmp_path, "mock", [OTHER_IMAGE]).validate("mock", mock)
    assert len(refused) == 1 and refused[0].startswith("mock: reference: matches no mock platform")
    assert _ca_policy(tmp_path, "mock", [OTHER_IMAGE, reference_entry()]).validate("mock", mock) == []

    debug_td = _debug_quote_result()
    pinned = [platform_entry("trustee-debug-td", debug_td)]
    reasons = _ca_policy(tmp_path, "tdx", pinned).validate("tdx", debug_td)
    assert len(reasons) == 1 and reasons[0].startswith("tdx: debug: a debug TEE")
    allowed = _ca_policy(tmp_path, "tdx", pinned, "allow_debug = true\n")
    assert allowed.validate("tdx", debug_td) == []


def test_report_verify_at_uses_that_time_for_every_validity_check(parties: Path) -> None:
    base = ["report", "verify", "report.cbor", "--allow-mock", "--reference", "reference.json", "--json"]
    now = json.loads(cli(*base, cwd=parties).stdout)
    assert now["ok"] is True and now["at"] is None
    later = json.loads(cli(*base, "--at", "2100-01-01T00:00:00Z", cwd=parties).stdout)
    checks = {c["name"]: (c["passed"], c["detail"]) for c in later["checks"]}
    assert later["at"] == "2100-01-01T00:00:00+00:00"
    assert checks["time"] == (True, "every validity check at 2100-01-01T00:00:00+00:00 (--at)")
    assert checks["certificate"][0] is False  # the CVM certificate has expired by then
    assert checks["signatures"][0] is False and "expired" in checks["signatures"][1]  # so have the parties'


# --- SEV-SNP and NVIDIA through the same module -----------------------------------------------


def _snp_result():  # type: ignore[no-untyped-def]
    from attestation.sevsnp.verifier import SnpVerifier
    from tests.snp_helpers import snp

    trust = Trust(collateral={"vcek": snp("virtee-sev/vcek_milan.der")})
    evidence = Evidence("sev-snp", snp("virtee-sev/report_milan.bin"))
    at = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    result = SnpVerifier().verify(evidence, expected_report_data=None, trust=trust, at=at)
    assert result.ok, result.reason()
    return result


@pytest.mark.parametrize(
    ("min_tcb", "failed"),
    [
        ({"bootloader": 3, "snp": 8, "microcode": 115}, []),
        ({"bootloader": 3, "snp": 9}, ["tcb"]),
        ({}, ["tcb"]),  # no minimum: the TCB was not evaluated
    ],
)
def test_snp_measurement_policy_and_minimum_tcb(min_tcb: dict, failed: list) -> None:  # type: ignore[type-arg]
    result = _snp_result()
    entry = platform_entry("milan-image", result)
    assert set(entry["values"]) >= {"measurement", "policy.raw", "vmpl", "host_data"}
    if min_tcb:
        entry["min_tcb"] = min_tcb
    appraisal = Appraisal(parse_reference(reference_document([entry]), "ref"))
    assert [c.name for c in appraise(result, appraisal) if not c.passed] == failed
    entry["values"]["policy.raw"] = ["0000000000030001"]  # another guest policy: not this image
    other = Appraisal(parse_reference(reference_document([entry]), "ref"))
    assert next(c.name for c in appraise(result, other) if not c.passed) == "reference"


def test_nvidia_versions_pinned_and_rims_required() -> None:
    from attestation.nvidia.verifier import NvidiaVerifier
    from tests.nvidia_helpers import NOW, REPORT_NONCE, real_evidence
    from tests.vectors import vectors_dir

    result = NvidiaVerifier().verify(
        real_evidence(vectors_dir()), expected_report_data=REPORT_NONCE, trust=Trust(), at=NOW
    )
    entry = platform_entry("h100-550", result)
    assert entry["values"]["driver_version"] == ["550.90.07"]
    pinned = Appraisal(parse_reference(reference_document([entry]), "ref"))
    failed = {c.name: c.detail for c in appraise(result, pinned) if not c.passed}
    assert failed == {"tcb": "RIMs not compared"}  # the versions match; the RIMs were not given
    entry["values"]["driver_version"] = ["535.00.00"]
    older = Appraisal(parse_reference(reference_document([entry]), "ref"))
    assert "driver_version 550.90.07 is not one of 1" in next(
        c.detail for c in appraise(result, older) if c.name == "reference"
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_the_reference_parser(raw: bytes) -> None:
    with contextlib.suppress(ReferenceError):
        parse_reference(raw, "fuzz.json")


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=12,
    )
)
def test_arbitrary_json_never_crashes_the_reference_parser(doc: object) -> None:
    for candidate in (doc, {"format": "trusted-loader/reference-values/v1", "platforms": [doc]}):
        with contextlib.suppress(ReferenceError):
            parse_reference(json.dumps(candidate).encode(), "fuzz.json")


def test_unhashable_tcb_status_is_a_named_error() -> None:
    entry = {"name": "t", "type": "tdx", "values": {}, "tcb_status": [{}]}
    doc = {"format": "trusted-loader/reference-values/v1", "platforms": [entry]}
    with pytest.raises(ReferenceError, match="must pin"):
        parse_reference(json.dumps(doc).encode(), "ref.json")
    entry["values"] = {
        n: ["00"] for n in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrseam", "td_attributes", "xfam")
    }
    with pytest.raises(ReferenceError, match="tcb_status: expected a list of"):
        parse_reference(json.dumps(doc).encode(), "ref.json")
