"""A small, bounded HTTP GET for vendor collateral (Intel PCS/PCCS, AMD KDS, NVIDIA RIM service).

Every document is asked for under a key that says what it is for ("tdx/tcb-info/50806f000000",
"sev-snp/vcek/milan/<hwid>/<spls>"): the key names its cache entry, and an offline directory
holds the same entries (`<key>.body` and `<key>.headers.json`), so a verifier with no network
reads exactly what a connected one fetched and cached. Responses are bounded (Content-Length
and the bytes actually read), time-limited, retried on outages (connection errors, 5xx, 429;
never on 4xx) and never redirected. A cached copy serves only when the server cannot be
reached: the verifiers judge its freshness, so a stale copy is refused there, not here.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from attestation.errors import CollateralError

DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
MAX_HEADER_BYTES = 64 * 1024
_KEY = re.compile(r"[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*")
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class FetchError(CollateralError):
    """A collateral document could not be obtained (unreachable, refused, oversized, absent)."""


@dataclass(frozen=True)
class Document:
    key: str
    url: str
    body: bytes
    headers: dict[str, str]  # lower-case names
    source: str  # "network", "cache" or "offline"

    def header(self, *names: str) -> str | None:
        return next((self.headers[n.lower()] for n in names if n.lower() in self.headers), None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


@dataclass(frozen=True)
class Fetcher:
    """Where documents come from: the network (with a cache directory) or an offline directory."""

    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = 0.5
    cache_dir: Path | None = None
    offline_dir: Path | None = None
    opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: urllib.request.build_opener(_NoRedirect()), compare=False
    )

    def get(self, key: str, url: str, *, limit: int, post: tuple[bytes, str] | None = None) -> Document:
        """The document `key` from `url`; `post` (body, content type) makes it a POST (OCSP)."""
        if not _KEY.fullmatch(key) or ".." in key.split("/"):
            raise FetchError(f"collateral key {key!r}: expected path segments of [A-Za-z0-9._=-]")
        if self.offline_dir is not None:
            found = _read_entry(self.offline_dir, key, limit)
            if found is None:
                raise FetchError(f"{self.offline_dir}: no offline copy of {key} ({key}.body)")
            return Document(key, url, found[0], found[1], "offline")
        if not url.startswith(("http://", "https://")):
            raise FetchError(f"{url}: expected an http:// or https:// URL")
        try:
            body, headers = self._download(url, limit, post)
        except FetchError as exc:
            cached = _read_entry(self.cache_dir, key, limit) if self.cache_dir else None
            if cached is None:
                raise
            _ = exc  # the server is down: the cached copy serves, its freshness judged by the verifier
            return Document(key, url, cached[0], cached[1], "cache")
        if self.cache_dir is not None:
            _write_entry(self.cache_dir, key, body, headers)
        return Document(key, url, body, headers, "network")

    def _download(
        self, url: str, limit: int, post: tuple[bytes, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        last = ""
        for attempt in range(max(1, self.attempts)):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 5.0))
            try:
                return self._once(url, limit, post)
            except _Retry as exc:
                last = str(exc)
        raise FetchError(f"{url}: {last} (after {max(1, self.attempts)} attempt(s))")

    def _once(
        self, url: str, limit: int, post: tuple[bytes, str] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        headers = {"Accept": "*/*", "User-Agent": "trusted-loader"}
        if post is not None:
            headers["Content-Type"] = post[1]
        request = urllib.request.Request(  # noqa: S310 (http/https only, checked in get)
            url, data=None if post is None else post[0], headers=headers
        )
        try:
            with self.opener.open(request, timeout=self.timeout) as resp:
                headers = _headers(resp.headers.items(), url)
                declared = headers.get("content-length")
                if declared is not None and (not declared.isdigit() or int(declared) > limit):
                    raise FetchError(f"{url}: Content-Length {declared}, more than the {limit} bytes allowed")
                body = self._read(resp, url, limit)
        except urllib.error.HTTPError as exc:
            if exc.code in _RETRY_STATUSES:
                raise _Retry(f"HTTP {exc.code}") from exc
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Retry(f"unreachable ({reason})") from exc
        if len(body) > limit:
            raise FetchError(f"{url}: response larger than the {limit} bytes allowed")
        return body, headers

    def _read(self, resp: object, url: str, limit: int) -> bytes:
        """At most limit + 1 bytes, within `timeout` seconds in all (a server trickling bytes
        would otherwise hold the boot, since the socket timeout is per read)."""
        deadline = time.monotonic() + self.timeout
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: response not complete within {self.timeout:g} s")
            chunk = resp.read1(min(64 * 1024, limit + 1 - size))  # type: ignore[attr-defined]
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)


class _Retry(Exception):
    """An outage worth another attempt."""


def _headers(items: object, url: str) -> dict[str, str]:
    out: dict[str, str] = {}
    total = 0
    for name, value in items:  # type: ignore[attr-defined]
        total += len(name) + len(value)
        if total > MAX_HEADER_BYTES:
            raise FetchError(f"{url}: response headers larger than {MAX_HEADER_BYTES} bytes")
        out[str(name).lower()] = str(value)
    return out


def _read_entry(directory: Path | None, key: str, limit: int) -> tuple[bytes, dict[str, str]] | None:
    if directory is None:
        return None
    body_path = directory / f"{key}.body"
    try:
        with body_path.open("rb") as f:
            body = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FetchError(f"{body_path}: cannot read: {exc.strerror}") from exc
    if len(body) > limit:
        raise FetchError(f"{body_path}: larger than the {limit} bytes allowed")
    headers_path = directory / f"{key}.headers.json"
    headers: dict[str, str] = {}
    if headers_path.exists():
        try:
            with headers_path.open("rb") as f:
                raw = json.loads(f.read(MAX_HEADER_BYTES + 1))
        except (OSError, ValueError) as exc:
            raise FetchError(f"{headers_path}: not a JSON object of headers ({exc})") from exc
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise FetchError(f"{headers_path}: expected a JSON object of strings")
        headers = {str(k).lower(): v for k, v in raw.items()}
    return body, headers


def _write_entry(directory: Path, key: str, body: bytes, headers: dict[str, str]) -> None:
    path = directory / f"{key}.body"
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path, body), (directory / f"{key}.headers.json", json.dumps(headers).encode())):
        tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def write_offline(directory: Path, key: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Store one document where an offline Fetcher finds it (for preparing an offline directory)."""
    _write_entry(directory, key, body, headers or {})
