"""Verifier of mock evidence: real signature checks, and a refusal unless allow_mock."""

from __future__ import annotations

import datetime as dt
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.errors import EvidenceFormatError
from attestation.evidence import ChecksBuilder, Evidence, Result, Trust
from attestation.mock import format as mockfmt
from attestation.mock.root import public_key


class MockVerifier:
    def verify(
        self,
        evidence: Evidence,
        *,
        expected_report_data: bytes | None,
        trust: Trust,
        at: dt.datetime,
    ) -> Result:
        checks = ChecksBuilder()
        checks.add(
            "mock_allowed",
            trust.allow_mock,
            "mock evidence accepted (allow_mock)"
            if trust.allow_mock
            else (
                "evidence is from the software mock TEE, not hardware; "
                "accept it with --allow-mock (allow_mock = true in a CA policy)"
            ),
        )
        if evidence.type != "mock":
            checks.fail("format", f"expected evidence type 'mock', found {evidence.type!r}")
            return Result("mock", checks.build(), {}, is_mock=True)
        try:
            ev = mockfmt.decode(evidence.data)
        except EvidenceFormatError as exc:
            checks.fail("format", str(exc))
            return Result("mock", checks.build(), {"mock": True}, is_mock=True)
        checks.ok("format", "mock evidence v1")
        try:
            public_key().verify(ev.signature, ev.payload, ec.ECDSA(hashes.SHA384()))
            checks.ok("signature", "signed by the mock root")
        except InvalidSignature:
            checks.fail("signature", "signature does not verify with the mock root key")
        if expected_report_data is not None:
            same = hmac.compare_digest(ev.report_data, expected_report_data)
            checks.add(
                "report_data",
                same,
                "matches the expected binding"
                if same
                else f"expected {expected_report_data.hex()[:16]}…, found {ev.report_data.hex()[:16]}…",
            )
        claims = {
            "mock": True,
            "tee": "mock",
            "debug": ev.debug,
            "created": dt.datetime.fromtimestamp(ev.created, dt.UTC).isoformat(),
            **{name: value.hex() for name, value in sorted(ev.registers.items())},
            "report_data": ev.report_data.hex(),
        }
        return Result("mock", checks.build(), claims, report_data=ev.report_data, is_mock=True)
