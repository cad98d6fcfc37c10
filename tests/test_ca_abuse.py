"""The CA under abusive clients: nonces spent only by verified evidence, per-client rate limits,
bounded bodies refused before parsing, replica-bound nonces, and honest CVMs still served."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attestation.evidence import Evidence
from certs import jsonlimits
from certs.ca import wire
from certs.ca.authority import CertificateAuthority, EnrollmentRequest, Refusal
from certs.ca.nonce import NonceError, NonceService
from certs.ca.ratelimit import Rate, RateLimiter
from certs.ca.service import BackgroundServer, Limits
from certs.csr import build_csr
from tests.ca_abuse import call, honest_enrollment, nonce, post, scenario
from tests.ca_helpers import Cvm, make_ca


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("abuse") / "ca"
    make_ca(directory, allow_mock=True)
    return directory


def _garbage(nonce_bytes: bytes, cvm: Cvm) -> EnrollmentRequest:
    junk = Evidence(type="mock", data=os.urandom(256), aux={})
    return EnrollmentRequest(csr=build_csr(cvm.key), nonce=nonce_bytes, evidence=(junk,))


# --- nonces -------------------------------------------------------------------------------


def test_garbage_evidence_never_spends_a_nonce_slot(ca_dir):
    ca = CertificateAuthority.load(ca_dir)
    ca.nonces._max = 3  # a tiny replay cache: garbage must not be able to fill it
    cvm = Cvm.new()
    for _ in range(20):
        got, _ = ca.nonces.issue()
        with pytest.raises(Refusal) as info:
            ca.issue(_garbage(got, cvm))
        assert info.value.code in ("evidence_rejected", "binding_mismatch")
    assert (ca.nonces.outstanding, ca.nonces.reserved) == (0, 0)
    got, _ = ca.nonces.issue()
    with pytest.raises(Refusal):
        ca.issue(_garbage(got, cvm))
    ca.issue(cvm.request(got))  # the nonce garbage used is still good for genuine evidence
    assert ca.nonces.outstanding == 1
    with pytest.raises(Refusal) as info:
        ca.issue(cvm.request(got))
    assert info.value.code == "nonce_replayed"


def test_a_reserved_nonce_cannot_be_used_concurrently():
    service = NonceService(os.urandom(32))
    got, _ = service.issue()
    service.reserve(got)
    with pytest.raises(NonceError, match="concurrent"):
        service.reserve(got)
    service.release(got)
    service.redeem(got)
    with pytest.raises(NonceError, match="already used"):
        service.reserve(got)


def test_replicas_redeem_only_their_own_nonces():
    clock = Clock()
    key = os.urandom(32)
    a, b = NonceService(key, replica=0, clock=clock), NonceService(key, replica=1, clock=clock)
    got, _ = a.issue()
    with pytest.raises(NonceError) as info:
        b.redeem(got)
    assert info.value.code == "nonce_wrong_replica"
    a.redeem(got)
    with pytest.raises(NonceError) as info:
        a.redeem(got)
    assert info.value.code == "nonce_replayed"
    forged = got[:8] + (1).to_bytes(2, "big") + got[10:]  # move it to replica 1: the MAC breaks
    with pytest.raises(NonceError) as info:
        b.redeem(forged)
    assert info.value.code == "nonce_unknown"


def test_two_replicas_over_http_keep_each_nonce_single_use(ca_dir):
    replicas = [CertificateAuthority.load(ca_dir, replica=n) for n in (0, 1)]
    with BackgroundServer(replicas[0]) as url0, BackgroundServer(replicas[1]) as url1:
        cvm = Cvm.new()
        got = nonce(url0, source="127.0.3.1")
        body = json.dumps(wire.encode_request(build_csr(cvm.key), got, [cvm.evidence(got)])).encode()
        status, doc = post(url1, body, source="127.0.3.1")
        assert (status, doc["error"]) == (403, "nonce_wrong_replica")
        status, doc = post(url0, body, source="127.0.3.1")
        assert status == 201, doc
        for url in (url0, url1):
            status, doc = post(url, body, source="127.0.3.1")
            assert status == 403 and doc["error"] in ("nonce_replayed", "nonce_wrong_replica")
        assert honest_enrollment(url1, "127.0.3.2")[0]
        assert [r.issued_count for r in replicas] == [1, 1]


# --- rate limits, bodies, health ------------------------------------------------------------


def test_rate_limiter_refills_and_forgets_the_oldest_client():
    now = [0.0]
    limiter = RateLimiter(Rate(per_second=2, burst=3), max_clients=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    limiter.allow("b")
    limiter.allow("c")
    assert limiter.clients == 2


def test_a_flooding_client_is_rate_limited_and_health_says_why(ca_dir):
    ca = CertificateAuthority.load(ca_dir)
    limits = Limits(enroll=Rate(per_second=1.0, burst=3.0))
    with BackgroundServer(ca, limits=limits) as url:
        answers = [post(url, b"[]", source="127.0.4.1")[0] for _ in range(10)]
        assert answers[:3] == [400, 400, 400] and set(answers[3:]) == {429}
        assert honest_enrollment(url, "127.0.4.2")[0]  # another client is not affected
        status, raw = call(url, "GET", "/healthz")
        health = json.loads(raw)
        assert status == 200 and health["refused"]["rate_limited"] == 7
        assert health["refused"]["bad_request"] == 3 and health["issued"] >= 1
        status, raw = call(url, "GET", "/metrics")
        assert b'trusted_loader_ca_refused_total{code="rate_limited"} 7' in raw


def test_a_declared_oversized_body_is_refused_before_it_is_read(ca_dir):
    ca = CertificateAuthority.load(ca_dir)
    with BackgroundServer(ca) as url:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/certificates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1073741824\r\n\r\n"
            )
            answer = sock.recv(65536)  # answered with no body sent at all
        assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer


def test_a_body_of_millions_of_values_is_refused_in_milliseconds():
    body = b"[" + b"0," * (2 << 20) + b"0]"
    start = time.perf_counter()
    with pytest.raises(jsonlimits.JsonTooLarge):
        jsonlimits.loads(body, max_values=2048)
    assert time.perf_counter() - start < 0.2


def test_the_event_loop_answers_nonces_while_big_bodies_are_parsed(ca_dir):
    ca = CertificateAuthority.load(ca_dir)
    limit = ca.policy.max_request_bytes
    zeros = b"[" + b"0," * ((limit - 64) // 2) + b"0]"
    with BackgroundServer(ca, limits=Limits(enroll=Rate(1000.0, 1000.0))) as url:
        stop = threading.Event()

        def flood(n: int) -> None:
            while not stop.is_set():
                status, doc = post(url, zeros, source=f"127.0.5.{n}")
                assert (status, doc["error"]) in ((400, "bad_request"), (503, "busy"))

        threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(1, 5)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        waits = []
        for _ in range(10):
            start = time.perf_counter()
            nonce(url, source="127.0.5.9")
            waits.append(time.perf_counter() - start)
        stop.set()
        for t in threads:
            t.join(timeout=20)
    assert sorted(waits)[5] < 0.5, waits


def test_honest_cvms_enroll_while_abusers_flood(ca_dir):
    """The fast variant of bench/bench_ca_abuse.py: every honest enrollment succeeds."""
    ca = CertificateAuthority.load(ca_dir)
    with BackgroundServer(ca, limits=Limits(enroll=Rate(per_second=2.0, burst=5.0))) as url:
        outcome = scenario(url, honest=20, honest_threads=4, abusers=3, max_bytes=ca.policy.max_request_bytes)
        _, raw = call(url, "GET", "/healthz")
    summary = outcome.summary()
    assert outcome.success_rate == 1.0, summary
    assert outcome.quantile(0.99) < 5.0, summary
    assert outcome.abusive_sent > 20, summary
    refused = json.loads(raw)["refused"]
    assert refused.get("rate_limited", 0) > 0 and refused.get("payload_too_large", 0) > 0, refused
    assert ca.nonces.outstanding == 20  # only the honest enrollments spent a nonce


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\\\[]{},: \u00e9', max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@given(_json_values)
def test_the_value_count_never_changes_what_parses(doc) -> None:
    raw = json.dumps(doc).encode()
    assert jsonlimits.loads(raw, max_values=10**6) == jsonlimits.loads(raw)
    containers = raw.count(b"[") + raw.count(b"{")  # upper bound: brackets inside strings too
    skeleton = jsonlimits.check_values(raw, 10**6)
    assert skeleton.count(b"[") + skeleton.count(b"{") <= containers
    assert jsonlimits.nesting_depth(skeleton) == jsonlimits.nesting_depth(raw)


def test_ipv6_clients_are_limited_per_64_so_rotating_addresses_does_not_help() -> None:
    from types import SimpleNamespace

    from certs.ca.service import _client

    a, b = (_client(SimpleNamespace(remote=r)) for r in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"))  # type: ignore[arg-type]
    assert a == b == "2001:db8:1:2::/64"
    assert _client(SimpleNamespace(remote="2001:db8:1:3::1")) != a  # type: ignore[arg-type]
    assert _client(SimpleNamespace(remote="192.0.2.7")) == "192.0.2.7"  # type: ignore[arg-type]
