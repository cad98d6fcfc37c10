"""The CA's HTTP service (aiohttp; the optional extra "ca").

    GET  /v1/nonce          a fresh nonce
    POST /v1/certificates   CSR + evidence + nonce -> certificate chain, or a refusal with reason
    GET  /v1/ca.pem         the CA certificate
    GET  /healthz           liveness and counters

Every response, including 404/405/413 and internal errors, is JSON (`certs.wire`). Bodies are
capped by aiohttp's `client_max_size` (the policy's max_request_bytes). Verification is CPU-bound
and synchronous, so it runs in a small thread pool: the event loop keeps answering nonces and
health checks, and beyond MAX_IN_FLIGHT concurrent enrollments the service answers 503 at once
instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from certs import wire
from certs.ca import CertificateAuthority, Refusal

log = logging.getLogger("certs.service")

MAX_IN_FLIGHT = 64
WORKERS = 4

STATUS = {
    "bad_request": 400,
    "csr_invalid": 400,
    "evidence_missing": 400,
    "nonce_malformed": 400,
    "nonce_unknown": 403,
    "nonce_expired": 403,
    "nonce_replayed": 403,
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
    415: "unsupported_media_type",
}

CA_KEY: web.AppKey[CertificateAuthority] = web.AppKey("ca", CertificateAuthority)
_POOL: web.AppKey[concurrent.futures.ThreadPoolExecutor] = web.AppKey(
    "pool", concurrent.futures.ThreadPoolExecutor
)
_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("slots", asyncio.Semaphore)


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
        reason = exc.reason
        if exc.status == 413:
            reason = f"request body larger than {request.app[CA_KEY].policy.max_request_bytes} bytes"
        return _error(code, f"{request.method} {request.path}: {reason}", exc.status)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error("internal", "internal error in the CA; see its log", 500)


async def _nonce(request: web.Request) -> web.Response:
    nonces = request.app[CA_KEY].nonces
    nonce, expiry = nonces.issue()
    return _json(wire.encode_nonce(nonce, expiry, nonces.ttl))


async def _ca_pem(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CA_KEY].ca_pem(), content_type="application/x-pem-file")


async def _health(request: web.Request) -> web.Response:
    ca = request.app[CA_KEY]
    return _json({"status": "ok", "issued": ca.issued_count, "redeemed_nonces": ca.nonces.outstanding})


async def _certificates(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        found = request.content_type
        return _error("unsupported_media_type", f"expected application/json, found {found}", 415)
    body = await request.read()
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return _error("bad_request", f"request body is not JSON ({type(exc).__name__})", 400)
    slots = request.app[_SLOTS]
    if slots.locked():
        return _error("busy", "too many enrollments in progress; retry shortly", 503)
    ca = request.app[CA_KEY]
    async with slots:
        try:
            enrollment = wire.decode_request(doc)
            loop = asyncio.get_running_loop()
            issued = await loop.run_in_executor(request.app[_POOL], ca.issue, enrollment)
        except Refusal as exc:
            log.info("refused (%s): %s", exc.code, exc.reason)
            return _error(exc.code, exc.reason, STATUS.get(exc.code, 403), exc.details)
    return _json(wire.encode_issued(issued), 201)


def make_app(ca: CertificateAuthority) -> web.Application:
    app = web.Application(client_max_size=ca.policy.max_request_bytes, middlewares=[_json_errors])
    app[CA_KEY] = ca
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ca-issue")
    app[_POOL] = pool

    async def _setup(app: web.Application) -> None:
        app[_SLOTS] = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def _shutdown(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(_setup)
    app.on_cleanup.append(_shutdown)
    app.router.add_get("/v1/nonce", _nonce)
    app.router.add_post("/v1/certificates", _certificates)
    app.router.add_get("/v1/ca.pem", _ca_pem)
    app.router.add_get("/healthz", _health)
    return app


async def start(
    ca: CertificateAuthority, host: str, port: int, *, ssl_context: Any = None
) -> tuple[web.AppRunner, str]:
    """Start serving; returns the runner (for cleanup) and the base URL with the bound port."""
    runner = web.AppRunner(make_app(ca), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=256)
    await site.start()
    sockets = site._server.sockets if site._server else ()  # type: ignore[union-attr]
    bound = sockets[0].getsockname()[1] if sockets else port
    scheme = "https" if ssl_context else "http"
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{scheme}://{shown}:{bound}"


def serve_forever(
    ca: CertificateAuthority, host: str, port: int, *, ssl_context: Any = None, ready: Callable[[str], None]
) -> None:
    """Serve until SIGINT/SIGTERM; `ready(url)` is called once the socket listens."""
    import signal

    async def main() -> None:
        runner, url = await start(ca, host, port, ssl_context=ssl_context)
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

    def __init__(self, ca: CertificateAuthority, host: str = "127.0.0.1", port: int = 0) -> None:
        self._ca, self._host, self._port = ca, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ca-service", daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> str:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start(self._ca, self._host, self._port), self._loop)
        self._runner, self.url = future.result(timeout=30)
        return self.url

    def __exit__(self, *_exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
