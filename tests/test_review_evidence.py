"""Red-team tests of the evidence verifiers on the real vectors.

Without collateral, nothing else pins the quoting enclave: the PCE signs the report of any
enclave that holds the provisioning attribute, so a host could run its own "QE" and sign any
TD report. The verifier must pin Intel's TD QE identity (MRSIGNER, ISVPRODID, no DEBUG) always.
"""

from __future__ import annotations

import pytest

from attestation.tdx import quote
from tests.tdx_helpers import NOW, QUOTES, quote_bytes, verify

# Offsets inside the 384-byte SGX report body of the QE (Intel SGX DCAP quote format).
QE_ATTRIBUTES, QE_MRSIGNER, QE_ISVPRODID = 48, 128, 256


def _qe_offset(raw: bytes) -> int:
    q = quote.parse(raw)
    at = raw.find(q.qe_report.raw)
    assert at > 0
    return at


def _checks(result) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    return {c.name: c.passed for c in result.checks}


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_real_quotes_come_from_intels_td_qe(name: str) -> None:
    result = verify(quote_bytes(name), NOW)
    assert _checks(result)["qe_enclave"] is True
    assert result.ok


@pytest.mark.parametrize(
    "offset, value",
    [(QE_MRSIGNER, 0x01), (QE_ISVPRODID, 0x01), (QE_ATTRIBUTES, 0x02)],
    ids=["mrsigner", "isvprodid", "debug"],
)
def test_a_quote_from_another_enclave_fails_qe_identity(offset: int, value: int) -> None:
    raw = bytearray(quote_bytes("go_v4"))
    raw[_qe_offset(bytes(raw)) + offset] ^= value
    result = verify(bytes(raw), NOW)
    assert _checks(result)["qe_enclave"] is False
    assert not result.ok
