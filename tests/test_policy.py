"""The approved list parser refuses anything it does not understand, naming the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.errors import PolicyError
from loader.report.policy import parse_policy

D = "sha256:" + "ab" * 32
RUN = {"runtime": "process", "command": ["{engine}"], "env": {}, "network": "none", "timeout": 60}
GOOD = {
    "version": 2,
    "order": "o-1",
    "engine": {"name": "e", "kind": "file", "digest": D},
    "datasets": [{"name": "lab", "kind": "directory", "digest": D}],
    "run": RUN,
    "output": {"recipient": None},
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
    assert [i.kind for i in policy.inputs] == ["file", "directory"]
    assert policy.execution.command == ("{engine}",) and policy.execution.timeout_ms == 60_000
    assert policy.execution.recipient is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown field 'extra'"),
        ({"version": 1}, "version: expected 2 .kinds, run and output"),
        ({"engine": {"name": "e", "digest": D}}, "engine.kind: expected one of"),
        ({"engine": {"name": "e", "kind": "link", "digest": D}}, "engine.kind: expected one of"),
        ({"run": {**RUN, "shell": True}}, "run: unknown field 'shell'"),
        ({"run": {k: v for k, v in RUN.items() if k != "env"}}, "run: missing field 'env'"),
        ({"run": {**RUN, "env": {"A": 1}}}, "run.env: expected an object"),
        ({"run": {**RUN, "timeout": 0}}, r"run.timeout: expected seconds"),
        ({"run": {**RUN, "runtime": "vm"}}, "run.runtime: expected 'process' or 'oci'"),
        ({"output": {}}, "output: expected"),
        ({"output": {"recipient": "k"}}, "output.recipient: expected 'sha256:'"),
        ({"tee": ["sgx"]}, "tee: unknown TEE type 'sgx'"),
        ({"tee": []}, "tee: expected a non-empty list"),
        (
            {"engine": {"name": "e", "kind": "file", "digest": "sha256:XY"}},
            "engine.digest: expected 'sha256:'",
        ),
        ({"engine": {"name": "../x", "kind": "file", "digest": D}}, "engine.name: expected 1-64"),
        ({"datasets": [{"name": "lab", "digest": D, "url": "x"}]}, r"datasets\[0\]: unknown field 'url'"),
        (
            {"datasets": [{"name": "a", "kind": "file", "digest": D}] * 2},
            "datasets: two entries share a name",
        ),
        ({"flags": {"allow_debug": "yes"}}, "flags.allow_debug: expected true or false"),
        ({"flags": {"network": True}}, "flags: unknown flag 'network'"),
    ],
)
def test_bad_policy_named(change: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=f"approved.json: {message}"):
        parse({**GOOD, **change})


def test_duplicate_keys_refused() -> None:
    raw = b'{"version": 2, "version": 2}'
    with pytest.raises(PolicyError, match="duplicate field 'version'"):
        parse_policy(raw, "p.json")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        parse_policy(raw, "p.json")
    except PolicyError as exc:
        assert str(exc).startswith("p.json: ")


def test_deeply_nested_policy_is_refused_without_recursing() -> None:
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200_000)  # as py-evm does on import: json.loads alone would crash
    try:
        with pytest.raises(PolicyError, match="nested 100000 levels deep"):
            parse_policy(b"[" * 100_000 + b"]" * 100_000, "p.json")
    finally:
        sys.setrecursionlimit(limit)


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    from certs.jsonlimits import loads, nesting_depth

    assert nesting_depth(b'{"a": "[[[[\\"{{{", "b": [1, {"c": []}]}') == 4
    assert loads(b'{"a": "[[[["}', max_depth=1) == {"a": "[[[["}
