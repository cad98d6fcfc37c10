"""Policy validation of verified TDX quotes (separate from verification)."""

from __future__ import annotations

import pytest

from attestation.tdx import quote
from attestation.tdx.validate import TdxPolicy, validate
from tests.tdx_helpers import (
    GO_V4_AT,
    NOW,
    TRUSTEE_AT,
    go_v4_collateral,
    quote_bytes,
    trustee_collateral,
    verify,
)


def _passed(checks) -> dict[str, bool]:
    return {c.name: c.passed for c in checks}


def test_matching_registers_pass_and_any_difference_fails():
    data = quote_bytes("trustee_6")
    body = quote.parse(data).body
    result = verify(data, TRUSTEE_AT, trustee_collateral(), accept_tcb={"OutOfDate"})
    policy = TdxPolicy(
        mrtd=body.mrtd,
        rtmr0=body.rtmr0,
        rtmr1=body.rtmr1,
        rtmr2=body.rtmr2,
        rtmr3=body.rtmr3,
        mrconfigid=body.mrconfigid,
        accept_tcb=frozenset({"OutOfDate"}),
    )
    checks = validate(result, policy)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert {"policy_mrtd", "policy_rtmr3", "policy_mrconfigid", "policy_debug", "policy_tcb"} <= _passed(
        checks
    ).keys()
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"):
        value = getattr(body, name)
        changed = TdxPolicy(**{name: bytes([value[0] ^ 1]) + value[1:]}, accept_tcb=frozenset({"OutOfDate"}))
        assert _passed(validate(result, changed))[f"policy_{name}"] is False


def test_tcb_status_policy():
    result = verify(quote_bytes("trustee_6"), TRUSTEE_AT, trustee_collateral(), accept_tcb={"OutOfDate"})
    assert _passed(validate(result, TdxPolicy(accept_tcb=frozenset({"OutOfDate"}))))["policy_tcb"] is True
    assert _passed(validate(result, TdxPolicy()))["policy_tcb"] is False
    bare = verify(quote_bytes("trustee_6"), NOW)
    assert _passed(validate(bare, TdxPolicy()))["policy_tcb"] is False
    assert _passed(validate(bare, TdxPolicy(require_tcb_evaluated=False)))["policy_tcb"] is True


def test_debug_td_refused_unless_allowed():
    result = verify(quote_bytes("trustee_4"), GO_V4_AT, go_v4_collateral())
    assert result.ok and result.claims["debug"] is True
    assert _passed(validate(result, TdxPolicy()))["policy_debug"] is False
    assert all(c.passed for c in validate(result, TdxPolicy(allow_debug=True)))


def test_unverified_result_fails_validation():
    result = verify(quote_bytes("trustee_6")[:-1000], NOW)
    assert _passed(validate(result, TdxPolicy(require_tcb_evaluated=False)))["policy_verified"] is False


def test_policy_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="mrtd must be 48 bytes"):
        TdxPolicy(mrtd=bytes(32))
