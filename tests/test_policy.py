"""The approved list parser refuses anything it does not understand, naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.errors import PolicyError
from loader.policy import parse_policy

D = "sha256:" + "ab" * 32
GOOD = {
    "version": 1,
    "order": "o-1",
    "engine": {"name": "e", "digest": D},
    "datasets": [{"name": "lab", "digest": D}],
    "tee": ["mock"],
}


def parse(doc: object) -> object:
    return parse_policy(json.dumps(doc).encode(), "approved.json")


def test_good_policy_and_digest_over_exact_bytes() -> None:
    raw = json.dumps(GOOD).encode()
    policy = parse_policy(raw, "approved.json")
    assert policy.flags == {"allow_debug": False, "require_gpu": False}
    spaced = parse_policy(json.dumps(GOOD, indent=4).encode(), "approved.json")
    assert spaced.inputs == policy.inputs and spaced.digest != policy.digest


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown field 'extra'"),
        ({"version": 2}, "version: expected 1"),
        ({"tee": ["sgx"]}, "tee: unknown TEE type 'sgx'"),
        ({"tee": []}, "tee: expected a non-empty list"),
        ({"engine": {"name": "e", "digest": "sha256:XY"}}, "engine.digest: expected 'sha256:'"),
        ({"engine": {"name": "../x", "digest": D}}, "engine.name: expected 1-64"),
        ({"datasets": [{"name": "lab", "digest": D, "url": "x"}]}, r"datasets\[0\]: unknown field 'url'"),
        ({"datasets": [{"name": "a", "digest": D}] * 2}, "datasets: two entries share a name"),
        ({"flags": {"allow_debug": "yes"}}, "flags.allow_debug: expected true or false"),
        ({"flags": {"network": True}}, "flags: unknown flag 'network'"),
    ],
)
def test_bad_policy_named(change: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=f"approved.json: {message}"):
        parse({**GOOD, **change})


def test_duplicate_keys_refused() -> None:
    raw = b'{"version": 1, "version": 1}'
    with pytest.raises(PolicyError, match="duplicate field 'version'"):
        parse_policy(raw, "p.json")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_policy(raw, "p.json")
    except PolicyError as exc:
        assert str(exc).startswith("p.json: ")
