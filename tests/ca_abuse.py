"""The CA-under-abuse scenario, shared by tests/test_ca_abuse.py (a few seconds) and
bench/bench_ca_abuse.py (longer, with figures).

Honest CVMs enroll with mock evidence, each from its own loopback address (127.0.1.N), while
abusive clients flood the same CA from other loopback addresses (127.0.2.N) as fast as they can
with garbage evidence under genuine nonces, `[0,0,...]` bodies just under the size limit,
declared bodies over it, and non-JSON. Everything stays on loopback and is bounded in time.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from certs.ca import wire
from certs.csr import build_csr
from tests.ca_helpers import Cvm


def call(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    source: str = "127.0.0.1",
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One request on a fresh connection from `source` (any 127/8 address works on Linux)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post(url: str, body: bytes, *, source: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, raw = call(
        url,
        "POST",
        "/v1/certificates",
        body,
        {"Content-Type": "application/json", **(headers or {})},
        source=source,
    )
    return status, json.loads(raw)


def nonce(url: str, *, source: str) -> bytes:
    status, raw = call(url, "GET", "/v1/nonce", source=source)
    if status != 200:
        raise RuntimeError(f"GET /v1/nonce: HTTP {status}: {raw[:200]!r}")
    return base64.b64decode(json.loads(raw)["nonce"])


def honest_enrollment(url: str, source: str) -> tuple[bool, float, str]:
    """(issued, seconds, code): nonce, mock evidence, CSR, POST, as a CVM does."""
    cvm = Cvm.new()
    start = time.perf_counter()
    try:
        got = nonce(url, source=source)
        body = json.dumps(wire.encode_request(build_csr(cvm.key), got, [cvm.evidence(got)])).encode()
        status, doc = post(url, body, source=source)
    except (OSError, RuntimeError, ValueError) as exc:
        return False, time.perf_counter() - start, type(exc).__name__
    return status == 201, time.perf_counter() - start, str(doc.get("error", "issued"))


def _garbage_evidence(url: str, source: str) -> bytes:
    got = nonce(url, source=source)
    cvm = Cvm.new()
    doc = wire.encode_request(build_csr(cvm.key), got, [])
    doc["evidence"] = [{"type": "mock", "data": base64.b64encode(os.urandom(512)).decode(), "aux": {}}]
    return json.dumps(doc).encode()


def _abusive_bodies(url: str, source: str, max_bytes: int) -> list[tuple[bytes, dict[str, str]]]:
    zeros = b"[" + b"0," * ((max_bytes - 64) // 2) + b"0]"
    return [
        (_garbage_evidence(url, source), {}),
        (zeros, {}),
        (b"x" * 1024, {"Content-Length": str(max_bytes * 16)}),
        (b"not json at all", {}),
    ]


@dataclass
class Tally:
    sent: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str) -> None:
        with self.lock:
            self.sent += 1
            self.answers[what] += 1


def abuse(url: str, source: str, stop: threading.Event, tally: Tally, max_bytes: int) -> None:
    """Flood from `source` until `stop` is set: each kind of hostile request in turn."""
    try:
        bodies = _abusive_bodies(url, source, max_bytes)
    except (OSError, RuntimeError):
        bodies = [(b"[" + b"0," * ((max_bytes - 64) // 2) + b"0]", {})]
    i = 0
    while not stop.is_set():
        body, headers = bodies[i % len(bodies)]
        i += 1
        try:
            status, _ = call(
                url,
                "POST",
                "/v1/certificates",
                body,
                {"Content-Type": "application/json", **headers},
                source=source,
                timeout=10,
            )
            tally.add(f"{status}")
        except (OSError, http.client.HTTPException) as exc:
            tally.add(type(exc).__name__)


@dataclass(frozen=True)
class Outcome:
    honest: int
    issued: int
    latencies: tuple[float, ...]
    failures: tuple[str, ...]
    abusive_sent: int
    abusive_answers: dict[str, int]
    seconds: float

    @property
    def success_rate(self) -> float:
        return self.issued / self.honest if self.honest else 0.0

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "honest": self.honest,
            "issued": self.issued,
            "success_rate": round(self.success_rate, 4),
            "latency_median_s": round(statistics.median(self.latencies), 3) if self.latencies else None,
            "latency_p99_s": round(self.quantile(0.99), 3),
            "latency_max_s": round(max(self.latencies), 3) if self.latencies else None,
            "abusive_requests": self.abusive_sent,
            "abusive_rate_per_s": round(self.abusive_sent / self.seconds, 1),
            "abusive_answers": self.abusive_answers,
            "failures": list(self.failures[:5]),
            "seconds": round(self.seconds, 2),
        }


def scenario(
    url: str, *, honest: int, honest_threads: int, abusers: int, max_bytes: int, warmup: float = 0.3
) -> Outcome:
    """Start `abusers` flooding threads, run `honest` enrollments over `honest_threads`, stop."""
    stop, tally = threading.Event(), Tally()
    flood = [
        threading.Thread(target=abuse, args=(url, f"127.0.2.{i + 1}", stop, tally, max_bytes), daemon=True)
        for i in range(abusers)
    ]
    start = time.perf_counter()
    for t in flood:
        t.start()
    time.sleep(warmup)
    results: list[tuple[bool, float, str]] = []
    lock = threading.Lock()
    counter = iter(range(honest))

    def worker(n: int) -> None:
        for i in counter:
            got = honest_enrollment(url, f"127.0.1.{(i % 250) + 1}")
            with lock:
                results.append(got)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(honest_threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    for t in flood:
        t.join(timeout=15)
    elapsed = time.perf_counter() - start
    return Outcome(
        honest=len(results),
        issued=sum(ok for ok, _, _ in results),
        latencies=tuple(s for ok, s, _ in results if ok),
        failures=tuple(code for ok, _, code in results if not ok),
        abusive_sent=tally.sent,
        abusive_answers=dict(tally.answers),
        seconds=elapsed,
    )
