"""Enrollment nonces: stateless to issue, single-use, bound to the replica that issued them.

A nonce is exactly 32 bytes:

    expiry (8, big-endian Unix seconds) ‖ replica (2) ‖ random (6)
        ‖ HMAC-SHA256(key, TAG ‖ expiry ‖ replica ‖ random)[:16]

Replicas share the MAC key (the CA directory's `nonce.key`) and each has its own replica number
(`ca serve --replica N`). A replica redeems only the nonces it issued: the replica number is
under the MAC, so a nonce cannot be moved to another replica, and each replica's in-memory
replay cache is then the only place the nonce can be redeemed: single use across the fleet
without shared state. The load balancer must send a client's `GET /v1/nonce` and its
`POST /v1/certificates` to the same replica (source-address affinity); a nonce presented to
another replica is refused as `nonce_wrong_replica`, which the loader retries with a fresh nonce.

A nonce is spent only when its evidence verified: `reserve` holds it while the evidence is
checked (so two concurrent requests cannot both use it), `spend` records it as used after the
evidence verified, `release` frees it when verification failed. Garbage evidence therefore costs
the CA nothing beyond its verification time, and the replay cache holds only nonces whose
evidence verified; the cache is bounded, and when full of unexpired nonces it fails closed
(`busy`) rather than forgetting a nonce early.
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
_EXPIRY, _REPLICA, _HEAD, _MAC = slice(0, 8), slice(8, 10), slice(0, 16), slice(16, 32)
_TAG = b"trusted-loader/ca-nonce/v2\x00"
MAX_REPLICA = 0xFFFF


class NonceError(Exception):
    """A nonce was refused; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NonceService:
    """Issues, reserves and spends nonces; thread-safe."""

    def __init__(
        self,
        key: bytes,
        *,
        ttl: int = 120,
        replica: int = 0,
        max_outstanding: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"nonce key: expected {KEY_LEN} bytes, found {len(key)}")
        if ttl <= 0:
            raise ValueError(f"nonce ttl: expected a positive number of seconds, found {ttl}")
        if not 0 <= replica <= MAX_REPLICA:
            raise ValueError(f"replica: expected 0..{MAX_REPLICA}, found {replica}")
        self._key = key
        self.ttl = ttl
        self.replica = replica
        self._max = max_outstanding
        self._clock = clock
        self._redeemed: set[bytes] = set()
        self._reserved: set[bytes] = set()
        self._by_expiry: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()

    def _mac(self, head: bytes) -> bytes:
        return hmac.new(self._key, _TAG + head, hashlib.sha256).digest()[:16]

    def issue(self) -> tuple[bytes, int]:
        """A fresh nonce and its expiry (Unix seconds)."""
        expiry = int(self._clock()) + self.ttl
        head = expiry.to_bytes(8, "big") + self.replica.to_bytes(2, "big") + secrets.token_bytes(6)
        return head + self._mac(head), expiry

    def check(self, nonce: bytes) -> int:
        """The nonce's expiry if this replica issued it and it has not expired; raises NonceError."""
        if len(nonce) != NONCE_LEN:
            raise NonceError("nonce_malformed", f"nonce: expected {NONCE_LEN} bytes, found {len(nonce)}")
        if not hmac.compare_digest(nonce[_MAC], self._mac(nonce[_HEAD])):
            raise NonceError("nonce_unknown", "nonce: not issued by this CA (authentication tag mismatch)")
        replica = int.from_bytes(nonce[_REPLICA], "big")
        if replica != self.replica:
            raise NonceError(
                "nonce_wrong_replica",
                f"nonce: issued by CA replica {replica}, this is replica {self.replica}; "
                "request a new nonce (the load balancer must keep a client on one replica)",
            )
        expiry = int.from_bytes(nonce[_EXPIRY], "big")
        now = int(self._clock())
        if now >= expiry:
            raise NonceError("nonce_expired", f"nonce: expired {now - expiry} s ago; request a new one")
        return expiry

    def reserve(self, nonce: bytes) -> None:
        """Check `nonce` and hold it while its evidence is verified; then `spend` or `release` it.
        A nonce already spent, or held by a concurrent request, raises NonceError."""
        self.check(nonce)
        with self._lock:
            self._evict(int(self._clock()))
            if nonce in self._redeemed:
                raise NonceError("nonce_replayed", "nonce: already used; request a new one")
            if nonce in self._reserved:
                raise NonceError("nonce_replayed", "nonce: in use by a concurrent request")
            if len(self._redeemed) + len(self._reserved) >= self._max:
                raise NonceError("busy", "nonce: too many outstanding enrollments; retry shortly")
            self._reserved.add(nonce)

    def spend(self, nonce: bytes) -> None:
        """Mark a reserved nonce used (its evidence verified) until it expires."""
        expiry = int.from_bytes(nonce[_EXPIRY], "big")
        with self._lock:
            self._reserved.discard(nonce)
            self._redeemed.add(nonce)
            heapq.heappush(self._by_expiry, (expiry, nonce))

    def release(self, nonce: bytes) -> None:
        """Give back a reserved nonce whose evidence did not verify: it was never spent."""
        with self._lock:
            self._reserved.discard(nonce)

    def redeem(self, nonce: bytes) -> None:
        """Check `nonce` and mark it used at once; a second redemption raises NonceError."""
        self.reserve(nonce)
        self.spend(nonce)

    def _evict(self, now: int) -> None:
        """Forget redeemed nonces that have expired (they would be refused as expired anyway)."""
        while self._by_expiry and self._by_expiry[0][0] <= now:
            _, stale = heapq.heappop(self._by_expiry)
            self._redeemed.discard(stale)

    @property
    def outstanding(self) -> int:
        with self._lock:
            return len(self._redeemed)

    @property
    def reserved(self) -> int:
        with self._lock:
            return len(self._reserved)


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
