"""Enrollment nonces: stateless to issue, single-use per CA replica until they expire.

A nonce is exactly 32 bytes:

    expiry (8, big-endian Unix seconds) ‖ random (8) ‖ HMAC-SHA256(key, TAG ‖ expiry ‖ random)[:16]

Any replica holding the same key (the CA directory's `nonce.key`) can check a nonce another
replica issued, so replicas share the load without shared state. Single use is enforced by a
bounded in-memory cache of redeemed nonces kept until they expire.

Trade-off (documented in docs/security-model.md): the replay cache is per replica, so with N replicas behind
a load balancer the same nonce could be redeemed up to N times within its lifetime. Such a
replay only yields another certificate for the key that signed the CSR, which the attacker does
not hold; a short TTL bounds the window. Operators who need strict single use run one replica or
pin clients to a replica. When the cache is full of unexpired nonces, redemption fails closed
(the client retries later) rather than forgetting a nonce early.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

NONCE_LEN = 32
KEY_LEN = 32
_EXPIRY, _RANDOM, _MAC = slice(0, 8), slice(8, 16), slice(16, 32)
_TAG = b"trusted-loader/ca-nonce/v1\x00"


class NonceError(Exception):
    """A nonce was refused; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NonceService:
    """Issues and redeems nonces; thread-safe."""

    def __init__(
        self,
        key: bytes,
        *,
        ttl: int = 120,
        max_outstanding: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"nonce key: expected {KEY_LEN} bytes, found {len(key)}")
        if ttl <= 0:
            raise ValueError(f"nonce ttl: expected a positive number of seconds, found {ttl}")
        self._key = key
        self.ttl = ttl
        self._max = max_outstanding
        self._clock = clock
        self._redeemed: set[bytes] = set()
        self._by_expiry: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def _mac(self, head: bytes) -> bytes:
        return hmac.new(self._key, _TAG + head, hashlib.sha256).digest()[:16]

    def issue(self) -> tuple[bytes, int]:
        """A fresh nonce and its expiry (Unix seconds)."""
        expiry = int(self._clock()) + self.ttl
        head = expiry.to_bytes(8, "big") + secrets.token_bytes(8)
        return head + self._mac(head), expiry

    def check(self, nonce: bytes) -> int:
        """The nonce's expiry if this CA issued it and it has not expired; raises NonceError."""
        if len(nonce) != NONCE_LEN:
            raise NonceError("nonce_malformed", f"nonce: expected {NONCE_LEN} bytes, found {len(nonce)}")
        if not hmac.compare_digest(nonce[_MAC], self._mac(nonce[_EXPIRY] + nonce[_RANDOM])):
            raise NonceError("nonce_unknown", "nonce: not issued by this CA (authentication tag mismatch)")
        expiry = int.from_bytes(nonce[_EXPIRY], "big")
        now = int(self._clock())
        if now >= expiry:
            raise NonceError("nonce_expired", f"nonce: expired {now - expiry} s ago; request a new one")
        return expiry

    def redeem(self, nonce: bytes) -> None:
        """Check `nonce` and mark it used; a second redemption raises NonceError."""
        expiry = self.check(nonce)
        with self._lock:
            self._evict(int(self._clock()))
            if nonce in self._redeemed:
                raise NonceError("nonce_replayed", "nonce: already used; request a new one")
            if len(self._redeemed) >= self._max:
                raise NonceError("busy", "nonce: too many outstanding enrollments; retry shortly")
            self._redeemed.add(nonce)
            heapq.heappush(self._by_expiry, (expiry, nonce))

    def _evict(self, now: int) -> None:
        """Forget redeemed nonces that have expired (they would be refused as expired anyway)."""
        while self._by_expiry and self._by_expiry[0][0] <= now:
            _, stale = heapq.heappop(self._by_expiry)
            self._redeemed.discard(stale)

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._redeemed)


def create_key(path: Path) -> bytes:
    """Write a new random nonce key with mode 0600; refuses to overwrite."""
    key = secrets.token_bytes(KEY_LEN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def load_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_LEN:
        raise ValueError(f"{path}: nonce key must be {KEY_LEN} bytes, found {len(key)}")
    return key
