"""The verification caches (certs/memo.py) never change a verdict.

Each test first verifies successfully, so that parsed collateral, issuer chains and the PCK chain
are remembered, then presents tampered, expired or differently trusted inputs: the cached path
must reject them exactly as a verifier with empty caches does.
"""

from __future__ import annotations

import datetime as dt

import pytest

from attestation.evidence import Evidence, Trust
from attestation.tdx import collateral as coll
from attestation.tdx.verifier import TdxVerifier, bundled_root
from certs import memo
from certs.chain import load_certificates, load_crl, verify_chain
from certs.errors import ChainError
from tests.tdx_helpers import GO_V4_AT, NOW, failed, go_v4_collateral, quote_bytes, tdx, utc, verify
from tests.vectors import vectors_dir

QUOTE = "trustee_4"


def _warm() -> None:
    memo.clear_all()
    result = verify(quote_bytes(QUOTE), GO_V4_AT, go_v4_collateral())
    assert result.ok, result.reason()


def _cold(data: bytes, at: dt.datetime, collateral: dict[str, bytes]) -> tuple[object, ...]:
    memo.clear_all()
    return verify(data, at, collateral).checks


@pytest.mark.parametrize(
    "at",
    [
        utc("2018-01-01"),  # before the PCK leaf and the CRLs were issued
        GO_V4_AT,
        utc("2023-08-01"),  # the PCK CRL's nextUpdate (2023-07-08) has passed, every certificate valid
        NOW,
        utc("2053-07-01"),
        dt.datetime(2023, 7, 8, 7, 27, 52, 999_999, tzinfo=dt.UTC),  # the CRL's last second
        dt.datetime(2023, 7, 8, 7, 27, 53, tzinfo=dt.UTC),  # one second later
    ],
)
def test_cached_verdict_equals_cold_verdict_at_any_time(at):
    _warm()
    warm = verify(quote_bytes(QUOTE), at, go_v4_collateral()).checks
    assert warm == _cold(quote_bytes(QUOTE), at, go_v4_collateral())


def test_cached_chains_still_fail_on_an_expired_crl():
    _warm()
    result = verify(quote_bytes(QUOTE), utc("2023-08-01"), go_v4_collateral())
    assert "pck_chain" in failed(result)
    assert "CRL has expired" in next(c.detail for c in result.checks if c.name == "pck_chain")


def test_cached_collateral_still_fails_when_stale_or_its_signer_expired():
    _warm()
    result = verify(quote_bytes(QUOTE), NOW, go_v4_collateral(with_crls=False))
    assert {"tcb_info", "qe_identity"} <= failed(result)
    assert "expired" in next(c.detail for c in result.checks if c.name == "tcb_info")


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_tampered_collateral_rejected_after_the_genuine_one_was_cached():
    _warm()
    genuine = go_v4_collateral()
    body = genuine[coll.TCB_INFO]
    for index in (body.index(b'"tcbEvaluationDataNumber"') + 30, len(body) - 10):
        bad = {**genuine, coll.TCB_INFO: _flip(body, index)}
        result = verify(quote_bytes(QUOTE), GO_V4_AT, bad)
        assert "tcb_info" in failed(result) or "tcb_status" in failed(result)
        assert result.checks == _cold(quote_bytes(QUOTE), GO_V4_AT, bad)
        _warm()


def test_tampered_pck_chain_and_quote_rejected_after_the_genuine_ones_were_cached():
    data = quote_bytes(QUOTE)
    start = data.index(b"-----BEGIN CERTIFICATE-----")
    for index, check in ((start + 200, "pck_chain"), (100, "quote_signature")):
        _warm()
        result = verify(_flip(data, index), GO_V4_AT, go_v4_collateral())
        assert check in failed(result), result.reason()


def test_another_trusted_root_is_not_served_from_the_bundled_roots_entry():
    _warm()
    ark = (vectors_dir() / "snp" / "go-sev-guest" / "ask_ark_milan.pem").read_bytes()
    trust = Trust(roots={"intel_root": ark}, collateral=go_v4_collateral())
    result = TdxVerifier().verify(
        Evidence("tdx", quote_bytes(QUOTE)), expected_report_data=None, trust=trust, at=GO_V4_AT
    )
    assert {"pck_chain", "tcb_info", "qe_identity"} <= failed(result)
    own = Trust(roots={"intel_root": tdx("intel", "TrustedRootCA.der")}, collateral=go_v4_collateral())
    ok = TdxVerifier().verify(
        Evidence("tdx", quote_bytes(QUOTE)), expected_report_data=None, trust=own, at=GO_V4_AT
    )
    assert ok.ok, ok.reason()


def test_windows_hold_only_inside_every_interval():
    start, end = utc("2020-01-01"), utc("2021-01-01")
    w = memo.Windows(certs=((start, end),), crls=((start, end),))
    assert w.hold_at(start) and w.hold_at(end) and w.hold_at(end + dt.timedelta(microseconds=999_999))
    assert not w.hold_at(start - dt.timedelta(seconds=1)) and not w.hold_at(end + dt.timedelta(seconds=1))
    assert not memo.Windows(certs=(), crls=((start, None),)).hold_at(start)  # no nextUpdate: verify in full
    with pytest.raises(ValueError):
        w.hold_at(dt.datetime(2020, 6, 1))


def test_lru_is_bounded_and_evicts_the_least_recently_used():
    lru: memo.Lru[bytes, int] = memo.Lru(2)
    lru.put(b"a", 1)
    lru.put(b"b", 2)
    assert lru.get(b"a") == 1
    lru.put(b"c", 3)
    assert len(lru) == 2 and lru.get(b"b") is None and lru.get(b"a") == 1 and lru.get(b"c") == 3
    with pytest.raises(ValueError):
        memo.Lru(0)


def _pck_chain() -> list:  # type: ignore[type-arg]
    from attestation.tdx import quote

    return load_certificates(quote.parse(quote_bytes(QUOTE)).pck_chain_pem.rstrip(b"\0"))


def test_a_remembered_chain_is_revalidated_at_each_time_and_for_each_input() -> None:
    memo.clear_all()
    certs = _pck_chain()
    crls = [load_crl(go_v4_collateral()[coll.PCK_CRL]), load_crl(go_v4_collateral()[coll.ROOT_CA_CRL])]

    def check(at: dt.datetime, mode: str = "all", roots: list | None = None, chain: list | None = None):  # type: ignore[no-untyped-def, type-arg]
        c = chain or certs
        return verify_chain(
            c[0], intermediates=c[1:], roots=roots or [bundled_root()], at=at, crls=crls, crl_mode=mode
        )

    assert len(check(GO_V4_AT)) == 3
    with pytest.raises(ChainError, match="CRL has expired"):
        check(utc("2023-08-01"))
    assert len(check(utc("2023-08-01"), mode="none")) == 3
    with pytest.raises(ChainError, match="expired"):
        check(utc("2053-07-01"), mode="none")
    with pytest.raises(ChainError, match="not yet valid"):
        check(utc("2018-01-01"), mode="none")
    ark = load_certificates((vectors_dir() / "snp" / "go-sev-guest" / "ask_ark_milan.pem").read_bytes())
    with pytest.raises(ChainError):
        check(GO_V4_AT, roots=ark[-1:])
    with pytest.raises(ChainError):
        check(GO_V4_AT, chain=[certs[0]])  # without the PCK CA the path cannot be built
    assert len(check(GO_V4_AT)) == 3


def test_snp_cached_vcek_and_chain_still_expire_and_callers_cannot_change_the_cache() -> None:
    from attestation.sevsnp import vcek
    from attestation.sevsnp.verifier import SnpVerifier
    from tests.snp_helpers import snp

    data, cert = snp("virtee-sev/report_milan.bin"), snp("virtee-sev/vcek_milan.der")
    memo.clear_all()

    def run(at: dt.datetime, der: bytes = cert):  # type: ignore[no-untyped-def]
        trust = Trust(collateral={"vcek": der})
        return SnpVerifier().verify(Evidence("sev-snp", data), expected_report_data=None, trust=trust, at=at)

    assert run(utc("2030-04-02")).ok
    late = run(utc("2030-04-04"))
    assert failed(late) == {"chain"} and "expired" in late.reason()
    flipped = bytearray(cert)
    flipped[40] ^= 0xFF
    assert not run(utc("2026-01-01"), bytes(flipped)).ok
    first = vcek.parse(cert)
    first.spls["snp"] = 255
    assert vcek.parse(cert).spls["snp"] != 255


def test_collateral_and_quote_as_bytearrays_verify_like_bytes() -> None:
    memo.clear_all()
    collateral = {k: bytearray(v) for k, v in go_v4_collateral().items()}
    trust = Trust(collateral=collateral, roots={"intel_root": bytearray(tdx("intel", "TrustedRootCA.der"))})
    evidence = Evidence("tdx", bytearray(quote_bytes(QUOTE)))  # type: ignore[arg-type]
    for _ in range(2):  # cold, then warm
        result = TdxVerifier().verify(evidence, expected_report_data=None, trust=trust, at=GO_V4_AT)
        assert result.ok, result.reason()
