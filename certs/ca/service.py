"""The CA's HTTP service (aiohttp; the optional extra "ca").

    GET  /v1/nonce          a fresh nonce
    POST /v1/certificates   CSR + evidence + nonce -> certificate chain, or a refusal with reason
    GET  /v1/ca.pem         the CA certificate
    GET  /healthz           liveness, what is in flight, and what was refused and why (JSON)
    GET  /metrics           the same counters in the Prometheus text format

Every response, including 404/405/413/429 and internal errors, is JSON (`certs.ca.wire`).

Under abuse, an enrollment passes these gates in order, each cheaper than the next:
1. per-client rate limit (token bucket per remote address; 429 `rate_limited`);
2. content type, and a declared Content-Length above the policy's max_request_bytes (413),
   refused before a byte of the body is read;
3. the in-flight limit (503 `busy` at once instead of queueing without bound);
4. the body is read (bounded by aiohttp's `client_max_size`, and by a read timeout), then parsed,
   decoded and verified in the worker pool, off the event loop: the JSON is first checked for
   its number of values in C (`jsonlimits`), so a multi-MiB `[0,0,...]` costs milliseconds.
The CA spends a nonce only when the evidence verified (`certs.ca.nonce`), so garbage evidence
cannot fill the replay cache. Every refusal is counted by its code for /healthz and /metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from certs import jsonlimits
from certs.ca import wire
from certs.ca.authority import CertificateAuthority, Refusal
from certs.ca.ratelimit import Rate, RateLimiter

log = logging.getLogger("certs.service")

MAX_IN_FLIGHT = 64
WORKERS = 4
# A legitimate request has at most 8 evidence items with 16 aux entries each: a few hundred
# JSON values. Anything with more is garbage, refused before it is parsed.
MAX_JSON_VALUES = 2048
BODY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Limits:
    """What one replica accepts per client and in total (`ca serve --rate/--burst`)."""

    enroll: Rate = field(default_factory=lambda: Rate(per_second=5.0, burst=20.0))
    nonce: Rate = field(default_factory=lambda: Rate(per_second=10.0, burst=40.0))
    max_in_flight: int = MAX_IN_FLIGHT
    workers: int = WORKERS
    max_clients: int = 10_000
    body_timeout: float = BODY_TIMEOUT


class Stats:
    """Counters for /healthz and /metrics: requests answered and refusals by code."""

    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self.in_flight = 0
        self._lock = threading.Lock()

    def refuse(self, code: str) -> None:
        with self._lock:
            self.refused[code] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.refused.items()))


STATUS = {
    "bad_request": 400,
    "csr_invalid": 400,
    "evidence_missing": 400,
    "nonce_malformed": 400,
    "nonce_unknown": 403,
    "nonce_expired": 403,
    "nonce_replayed": 403,
    "nonce_wrong_replica": 403,
    "rate_limited": 429,
    "binding_mismatch": 403,
    "evidence_rejected": 403,
    "policy_refused": 403,
    "busy": 503,
    "ca_expired": 503,
}
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
    415: "unsupported_media_type",
}

CA_KEY: web.AppKey[CertificateAuthority] = web.AppKey("ca", CertificateAuthority)
_POOL: web.AppKey[concurrent.futures.ThreadPoolExecutor] = web.AppKey(
    "pool", concurrent.futures.ThreadPoolExecutor
)
_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("slots", asyncio.Semaphore)
_LIMITS: web.AppKey[Limits] = web.AppKey("limits", Limits)
_STATS: web.AppKey[Stats] = web.AppKey("stats", Stats)
_ENROLL_RATE: web.AppKey[RateLimiter] = web.AppKey("enroll_rate", RateLimiter)
_NONCE_RATE: web.AppKey[RateLimiter] = web.AppKey("nonce_rate", RateLimiter)


def _json(doc: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(doc, sort_keys=True) + "\n",
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(code: str, reason: str, status: int, details: tuple[str, ...] = ()) -> web.Response:
    return _json(wire.encode_error(code, reason, details), status)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        request.app[_STATS].refuse(code)
        reason = exc.reason
        if exc.status == 413:
            reason = f"request body larger than {request.app[CA_KEY].policy.max_request_bytes} bytes"
        return _error(code, f"{request.method} {request.path}: {reason}", exc.status)
    except Exception:
        request.app[_STATS].refuse("internal")
        log.exception("internal error on %s %s", request.method, request.path)
        return _error("internal", "internal error in the CA; see its log", 500)


def _refuse(request: web.Request, code: str, reason: str, details: tuple[str, ...] = ()) -> web.Response:
    request.app[_STATS].refuse(code)
    return _error(code, reason, STATUS.get(code, 403), details)


def _client(request: web.Request) -> str:
    """The rate-limited unit: the remote IPv4 address, or the IPv6 /64 (one host usually holds a
    whole /64, so single IPv6 addresses would be free to rotate). Behind a load balancer this is
    the balancer unless it passes the client's address through; see docs/ca-abuse.md."""
    remote = request.remote or "unknown"
    if ":" in remote:
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv6Network((remote.split("%")[0], 64), strict=False))
    return remote


async def _nonce(request: web.Request) -> web.Response:
    if not request.app[_NONCE_RATE].allow(_client(request)):
        return _refuse(request, "rate_limited", "too many nonce requests from this client; slow down")
    nonces = request.app[CA_KEY].nonces
    nonce, expiry = nonces.issue()
    return _json(wire.encode_nonce(nonce, expiry, nonces.ttl))


async def _ca_pem(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CA_KEY].ca_pem(), content_type="application/x-pem-file")


def _counters(app: web.Application) -> dict[str, Any]:
    ca, stats = app[CA_KEY], app[_STATS]
    return {
        "issued": ca.issued_count,
        "in_flight": stats.in_flight,
        "max_in_flight": app[_LIMITS].max_in_flight,
        "spent_nonces": ca.nonces.outstanding,
        "reserved_nonces": ca.nonces.reserved,
        "replica": ca.nonces.replica,
        "tracked_clients": app[_ENROLL_RATE].clients,
        "refused": stats.snapshot(),
    }


async def _health(request: web.Request) -> web.Response:
    counters = _counters(request.app)
    busy = counters["in_flight"] >= counters["max_in_flight"]
    return _json({"status": "busy" if busy else "ok", **counters})


async def _metrics(request: web.Request) -> web.Response:
    counters = _counters(request.app)
    lines = []
    for name in (
        "issued",
        "in_flight",
        "max_in_flight",
        "spent_nonces",
        "reserved_nonces",
        "tracked_clients",
    ):
        lines.append(f"# TYPE trusted_loader_ca_{name} gauge")
        lines.append(f"trusted_loader_ca_{name} {counters[name]}")
    lines.append("# HELP trusted_loader_ca_refused_total requests refused, by the code in the answer")
    lines.append("# TYPE trusted_loader_ca_refused_total counter")
    for code, count in counters["refused"].items():
        lines.append(f'trusted_loader_ca_refused_total{{code="{code}"}} {count}')
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


def _parse_and_issue(ca: CertificateAuthority, body: bytes) -> Any:
    """In the worker pool: bounded JSON parse, decode, verify, issue (raises Refusal)."""
    try:
        doc = jsonlimits.loads(body, max_values=MAX_JSON_VALUES)
    except (ValueError, RecursionError) as exc:
        raise Refusal("bad_request", f"request body is not an acceptable JSON document: {exc}") from None
    return ca.issue(wire.decode_request(doc))


async def _certificates(request: web.Request) -> web.Response:
    app = request.app
    limits, ca = app[_LIMITS], app[CA_KEY]
    if not app[_ENROLL_RATE].allow(_client(request)):
        return _refuse(request, "rate_limited", "too many enrollments from this client; slow down")
    if request.content_type != "application/json":
        found = request.content_type
        app[_STATS].refuse("unsupported_media_type")
        return _error("unsupported_media_type", f"expected application/json, found {found}", 415)
    declared = request.content_length
    if declared is not None and declared > ca.policy.max_request_bytes:
        app[_STATS].refuse("payload_too_large")
        reason = f"request body of {declared} bytes, larger than {ca.policy.max_request_bytes} bytes"
        return _error("payload_too_large", reason, 413)
    slots = app[_SLOTS]
    if slots.locked():
        return _refuse(request, "busy", "too many enrollments in progress; retry shortly")
    async with slots:
        app[_STATS].in_flight += 1
        try:
            try:
                body = await asyncio.wait_for(request.read(), limits.body_timeout)
            except TimeoutError:
                return _refuse(
                    request, "bad_request", f"request body not received within {limits.body_timeout:.0f} s"
                )
            loop = asyncio.get_running_loop()
            issued = await loop.run_in_executor(app[_POOL], _parse_and_issue, ca, body)
        except Refusal as exc:
            log.info("refused (%s): %s", exc.code, exc.reason)
            return _refuse(request, exc.code, exc.reason, exc.details)
        finally:
            app[_STATS].in_flight -= 1
    return _json(wire.encode_issued(issued), 201)


def make_app(ca: CertificateAuthority, limits: Limits | None = None) -> web.Application:
    limits = limits or Limits()
    app = web.Application(client_max_size=ca.policy.max_request_bytes, middlewares=[_json_errors])
    app[CA_KEY] = ca
    app[_LIMITS] = limits
    app[_STATS] = Stats()
    app[_ENROLL_RATE] = RateLimiter(limits.enroll, max_clients=limits.max_clients)
    app[_NONCE_RATE] = RateLimiter(limits.nonce, max_clients=limits.max_clients)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="ca-issue")
    app[_POOL] = pool

    async def _setup(app: web.Application) -> None:
        app[_SLOTS] = asyncio.Semaphore(limits.max_in_flight)

    async def _shutdown(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(_setup)
    app.on_cleanup.append(_shutdown)
    app.router.add_get("/v1/nonce", _nonce)
    app.router.add_post("/v1/certificates", _certificates)
    app.router.add_get("/v1/ca.pem", _ca_pem)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/metrics", _metrics)
    return app


async def start(
    ca: CertificateAuthority, host: str, port: int, *, ssl_context: Any = None, limits: Limits | None = None
) -> tuple[web.AppRunner, str]:
    """Start serving; returns the runner (for cleanup) and the base URL with the bound port."""
    runner = web.AppRunner(make_app(ca, limits), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=256)
    await site.start()
    sockets = site._server.sockets if site._server else ()  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    scheme = "https" if ssl_context else "http"
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{scheme}://{shown}:{bound}"


def serve_forever(
    ca: CertificateAuthority,
    host: str,
    port: int,
    *,
    ssl_context: Any = None,
    limits: Limits | None = None,
    ready: Callable[[str], None],
) -> None:
    """Serve until SIGINT/SIGTERM; `ready(url)` is called once the socket listens."""
    import signal

    async def main() -> None:
        runner, url = await start(ca, host, port, ssl_context=ssl_context, limits=limits)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready(url)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


class BackgroundServer:
    """The service on its own event loop in a daemon thread (tests and benchmarks).

    with BackgroundServer(ca) as url: ...
    """

    def __init__(
        self, ca: CertificateAuthority, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None
    ) -> None:
        self._ca, self._host, self._port, self._limits = ca, host, port, limits
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ca-service", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> str:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start(self._ca, self._host, self._port, limits=self._limits), self._loop
        )
        self._runner, self.url = future.result(timeout=30)
        return self.url

    def __exit__(self, *_exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
