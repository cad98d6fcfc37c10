"""OCSP for the GPU certificate chain (attestation/nvidia/ocsp.py) against a real responder on
loopback (tests/ocsp_responder.py, a SYNTHETIC TEST CA): good, revoked and unknown statuses are
reported as such; a stale, wrongly signed, replayed or garbage answer is refused.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from attestation.fetch import Fetcher, write_offline
from attestation.nvidia import ocsp
from tests.ocsp_responder import OcspServer, Pki, Responder

FAST = Fetcher(timeout=5, attempts=1)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _check(pki: Pki, responder: Responder, fetcher: Fetcher = FAST) -> ocsp.CertStatus:
    with OcspServer(responder) as url:
        return ocsp.check_one(pki.leaf, pki.ca, url=url, fetcher=fetcher, at=dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("status", ["good", "revoked", "unknown"])
def test_the_responders_status_is_reported(pki: Pki, status: str) -> None:
    found = _check(pki, Responder(pki, status=status))
    assert found.status == status and found.good is (status == "good")
    assert found.source == "network" and found.serial == pki.leaf.serial_number
    if status == "revoked":
        assert found.revoked_at is not None and found.reason == "keyCompromise"
        assert "REVOKED at" in found.line()


def test_a_delegated_responder_with_ocsp_signing_is_accepted(pki: Pki) -> None:
    assert _check(pki, Responder(pki, mode="delegate")).good


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("stale", "stale: nextUpdate"),
        ("stranger", "is not certified by"),
        ("plain-delegate", "lacks id-kp-OCSPSigning"),
        ("no-nonce", "carries no nonce"),
        ("fixed-nonce", "is not the request's"),
        ("garbage", "not DER OCSPResponse"),
    ],
)
def test_a_lying_responder_is_refused(pki: Pki, mode: str, needle: str) -> None:
    with pytest.raises(ocsp.OcspError, match=needle) as info:
        _check(pki, Responder(pki, mode=mode))
    assert "TEST GPU leaf" in str(info.value)  # the message names the certificate


def test_a_response_for_another_certificate_is_refused(pki: Pki) -> None:
    other = Pki()  # same responder answers about its own leaf, not ours
    with OcspServer(Responder(other)) as url, pytest.raises(ocsp.OcspError):
        ocsp.check_one(pki.leaf, pki.ca, url=url, fetcher=FAST, at=dt.datetime.now(dt.UTC))


def test_the_whole_chain_is_checked_and_a_later_evaluation_time_finds_it_stale(pki: Pki) -> None:
    responder = Responder(pki)
    with OcspServer(responder) as url:
        (leaf,) = ocsp.check_chain([pki.leaf, pki.ca], url=url, fetcher=FAST, at=dt.datetime.now(dt.UTC))
        assert leaf.good and responder.requests == 1
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        with pytest.raises(ocsp.OcspError, match="stale"):
            ocsp.check_chain([pki.leaf, pki.ca], url=url, fetcher=FAST, at=later)


def test_an_offline_copy_is_judged_by_its_validity_not_its_nonce(pki: Pki, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with OcspServer(Responder(pki)) as url:
        ocsp.check_one(
            pki.leaf,
            pki.ca,
            url=url,
            fetcher=Fetcher(attempts=1, cache_dir=cache),
            at=dt.datetime.now(dt.UTC),
        )
    (body,) = list(cache.rglob("*.body"))
    key = str(body.relative_to(cache))[: -len(".body")]
    offline = tmp_path / "offline"
    write_offline(offline, key, body.read_bytes())
    found = ocsp.check_one(
        pki.leaf,
        pki.ca,
        url="http://127.0.0.1:9/",
        fetcher=Fetcher(offline_dir=offline),
        at=dt.datetime.now(dt.UTC),
    )
    assert found.good and found.source == "offline"
    with pytest.raises(ocsp.OcspError, match="stale"):
        ocsp.check_one(
            pki.leaf,
            pki.ca,
            url="http://127.0.0.1:9/",
            fetcher=Fetcher(offline_dir=offline),
            at=dt.datetime.now(dt.UTC) + dt.timedelta(days=2),
        )


def test_with_revocation_adds_one_check_per_certificate_and_drops_the_advisory(pki: Pki) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from attestation.evidence import Check, Result

    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (pki.leaf, pki.ca))
    before = Result(
        "nvidia", (Check("chain", True, "synthetic"),), {}, advisories=(ocsp.NOT_CHECKED + ": x",)
    )
    for status, ok in (("good", True), ("revoked", False)):
        with OcspServer(Responder(pki, status=status)) as url:
            after = ocsp.with_revocation(before, chain, url=url, fetcher=FAST, at=dt.datetime.now(dt.UTC))
        assert [c.name for c in after.checks] == ["chain", "ocsp:0"] and after.ok is ok
        assert after.advisories == ()


def test_evidence_verify_nvidia_refuses_an_answer_not_signed_by_nvidia(
    vectors: Path, pki: Pki, capsys
) -> None:
    """The real nvtrust chain against the loopback TEST responder: its answers are signed by the
    TEST CA, not by the GPU chain's issuers, so every certificate's check fails (exit 1)."""
    import json

    from attestation.nvidia import cli
    from tests.nvidia_helpers import CHAIN, NOW, REPORT, REPORT_NONCE

    args = [str(vectors / REPORT), "--chain", str(vectors / CHAIN), "--nonce", REPORT_NONCE.hex()]
    args += ["--at", NOW.isoformat(), "--any-image", "--json"]
    assert cli.main(args) in (0, 1)
    plain = json.loads(capsys.readouterr().out)
    assert any(a.startswith(ocsp.NOT_CHECKED) for a in plain["advisories"])
    with OcspServer(Responder(pki)) as url:
        assert cli.main([*args, "--ocsp-url", url]) == 1
    out = json.loads(capsys.readouterr().out)
    failed = {c["name"]: c["detail"] for c in out["checks"] if not c["passed"]}
    assert "ocsp:0" in failed and "is not signed by" in failed["ocsp:0"]
    assert not any(a.startswith(ocsp.NOT_CHECKED) for a in out["advisories"])
