"""Bounded memory of what verification derives from immutable bytes, and the time it still checks.

Parsing a certificate, a CRL or a signed JSON document, and checking a signature over it, give
the same answer for the same bytes at any time: such results are remembered under a key made of
the exact input bytes (never a digest, never an object identity). A chain verification also
depends on the time: it is remembered with the validity windows it relied on (`Windows`), and a
remembered success is reused only while every window still holds at the caller's `at`; otherwise
the caller verifies in full again, so a failure always comes with the verifier's own reason and
a cache never turns a rejection into an acceptance. Failures are never remembered.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cryptography import x509

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_SIZE = 256
"""Entries per cache: a verifier sees a few platforms and a few collateral versions at a time."""

Key = tuple[bytes | str | None, ...]
"""A cache key: the exact bytes of every input (None for an absent one) and the mode strings."""


class Lru(Generic[K, V]):
    """A thread-safe least-recently-used map holding at most `size` entries."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError(f"cache size: expected at least 1, found {size}")
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_ALL: list[Lru[object, object]] = []


def cache(size: int = DEFAULT_SIZE) -> Lru[K, V]:
    """A new cache, registered so that `clear_all` (tests, benchmarks) empties it."""
    made: Lru[K, V] = Lru(size)
    _ALL.append(made)  # type: ignore[arg-type]
    return made


def clear_all() -> None:
    for one in _ALL:
        one.clear()


def _second(at: dt.datetime) -> dt.datetime:
    """The time as OpenSSL's store sees it: UTC, whole seconds (pyOpenSSL drops the fraction)."""
    if at.tzinfo is None:
        raise ValueError("validity check: `at` must be timezone-aware")
    return at.astimezone(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Windows:
    """The validity intervals a chain verification relied on: every certificate of the path it
    built, and every CRL it was given. A remembered verification is reused only where all hold,
    which is at least as strict as OpenSSL's own time checks (notBefore <= t <= notAfter,
    thisUpdate <= t <= nextUpdate)."""

    certs: tuple[tuple[dt.datetime, dt.datetime], ...]
    crls: tuple[tuple[dt.datetime, dt.datetime | None], ...] = ()

    @classmethod
    def of(
        cls, path: Iterable[x509.Certificate], crls: Sequence[x509.CertificateRevocationList] = ()
    ) -> Windows:
        return cls(
            tuple((c.not_valid_before_utc, c.not_valid_after_utc) for c in path),
            tuple((c.last_update_utc, c.next_update_utc) for c in crls),
        )

    def hold_at(self, at: dt.datetime) -> bool:
        t = _second(at)
        return all(start <= t <= end for start, end in self.certs) and all(
            start <= t and (end is not None and t <= end) for start, end in self.crls
        )
