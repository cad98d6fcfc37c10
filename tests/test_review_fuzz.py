"""Mutated real evidence through the FULL verifiers: nothing raises, nothing mutated passes.

Each test first checks that the untouched vector verifies with the same inputs, so a rejection
of a mutant is the mutation's doing. Changes are any byte to any other value anywhere in the
blob (signed or not), truncations, and insertions; TDX bytes after the parsed quote are the one
region a verifier deliberately ignores (MANIFEST: several real quotes carry them), so mutations
stay inside the quote there.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from attestation import Evidence, Trust, verifier_for
from attestation.mock.attester import MockAttester
from attestation.nvidia import spdm
from attestation.tdx import quote
from loader.report.verify import verify_report
from tests.appraisal_helpers import MOCK
from tests.nvidia_helpers import CHAIN, REPORT, REPORT_NONCE
from tests.review_helpers import base_payload, forge

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Case:
    """One real vector: its evidence, what it must verify with, and the span that may mutate."""

    def __init__(self, evidence: Evidence, expected: bytes, trust: Trust, span: int) -> None:
        self.evidence, self.expected, self.trust, self.span = evidence, expected, trust, span

    def verify(self, data: bytes | None = None, aux: dict[str, bytes] | None = None) -> Any:
        ev = Evidence(
            self.evidence.type, self.evidence.data if data is None else data, aux or self.evidence.aux
        )
        return verifier_for(ev.type).verify(ev, expected_report_data=self.expected, trust=self.trust, at=NOW)


def _tdx(vectors: Path) -> Case:
    data = (vectors / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes()
    q = quote.parse(data)
    return Case(Evidence("tdx", data), q.body.report_data, Trust(), q.length)


def _snp(vectors: Path) -> Case:
    data = (vectors / "snp/virtee-sev/report_milan.bin").read_bytes()
    vcek = (vectors / "snp/virtee-sev/vcek_milan.der").read_bytes()
    return Case(Evidence("sev-snp", data, {"vcek": vcek}), data[0x50:0x90], Trust(), len(data))


def _nvidia(vectors: Path) -> Case:
    raw = spdm.parse((vectors / REPORT).read_bytes()).raw
    ev = Evidence("nvidia", raw, {"chain": (vectors / CHAIN).read_bytes()})
    return Case(ev, REPORT_NONCE, Trust(), len(raw))


def _mock(_: Path) -> Case:
    rd = bytes(range(64))
    ev = MockAttester().collect(rd)
    return Case(ev, rd, Trust(allow_mock=True), len(ev.data))


CASES = {"tdx": _tdx, "sev-snp": _snp, "nvidia": _nvidia, "mock": _mock}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request: pytest.FixtureRequest, vectors: Path) -> Case:
    built = CASES[request.param](vectors)
    baseline = built.verify()
    assert baseline.ok, baseline.reason()
    return built


@FUZZ
@given(data=st.data())
def test_any_byte_change_is_rejected(case: Case, data: st.DataObject) -> None:
    blob = case.evidence.data
    pos = data.draw(st.integers(0, case.span - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[pos]), label="value")
    result = case.verify(blob[:pos] + bytes([value]) + blob[pos + 1 :])
    assert not result.ok, f"byte {pos} -> {value:#04x} accepted"


@FUZZ
@given(data=st.data())
def test_truncation_and_insertion_are_rejected(case: Case, data: st.DataObject) -> None:
    blob = case.evidence.data
    pos = data.draw(st.integers(0, case.span - 1), label="position")
    if data.draw(st.booleans(), label="truncate"):
        mutant = blob[:pos]
    else:
        mutant = blob[:pos] + data.draw(st.binary(min_size=1, max_size=8), label="inserted") + blob[pos:]
    # Inserting b"\n" into a run of b"\n\n" leaves the first `span` bytes as they were and only
    # lengthens the bytes after the quote, which TDX tolerates by design (Quote.trailing).
    assume(mutant[: case.span] != blob[: case.span])
    assert not case.verify(mutant).ok


@FUZZ
@given(data=st.data())
def test_any_byte_change_in_aux_certificates_is_rejected(case: Case, data: st.DataObject) -> None:
    if not case.evidence.aux:
        return
    name = data.draw(st.sampled_from(sorted(case.evidence.aux)), label="aux")
    blob = case.evidence.aux[name]
    pos = data.draw(st.integers(0, len(blob) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != blob[pos]), label="value")
    mutant = blob[:pos] + bytes([value]) + blob[pos + 1 :]
    if mutant.strip() == blob.strip() or _same_pem(mutant, blob):
        return
    result = case.verify(aux={**case.evidence.aux, name: mutant})
    assert not result.ok, f"aux {name} byte {pos} -> {value:#04x} accepted"


def _same_pem(a: bytes, b: bytes) -> bool:
    """A PEM bundle whose change falls outside the base64 blocks (text between them) decodes the same."""
    from certs.chain import load_certificates
    from certs.errors import CertsError

    try:
        return load_certificates(a) == load_certificates(b)
    except CertsError:
        return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["tdx", "sev-snp", "nvidia", "mock", "mock-gpu"]), blob=st.binary(max_size=600))
def test_report_verify_never_raises_on_hostile_evidence(
    demo_report: tuple[Path, bytes], kind: str, blob: bytes
) -> None:
    template = base_payload(demo_report[1])
    cpu = kind if kind != "mock-gpu" else "mock"

    def evidence(report_data: bytes) -> list[dict[str, Any]]:
        if kind == "mock-gpu":
            real = MockAttester().collect(report_data).to_cbor_obj()
            return [real, {"type": kind, "data": blob, "aux": {"chain": blob}}]
        return [{"type": kind, "data": blob, "aux": {"chain": blob, "vcek": blob}}]

    raw = forge(template, evidence=evidence, mutate=lambda p: p.__setitem__("tee", cpu))
    assert not verify_report(raw, allow_mock=True, appraisal=MOCK).ok
