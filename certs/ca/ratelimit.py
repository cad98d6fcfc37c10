"""Per-client token buckets: each client may spend `burst` requests at once, then `rate` per second.

The table of clients is bounded (least recently seen forgotten first), so a flood of distinct
addresses costs memory in proportion to `max_clients`, not to the flood. A forgotten client starts
again with a full bucket, which is no more than a new address would get.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError(f"rate: expected per_second > 0 and burst >= 1, found {self}")


class RateLimiter:
    """`allow(client)` spends one token of the client's bucket, or returns False."""

    def __init__(
        self, rate: Rate, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self._max = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, seen = self._buckets.pop(client, (self.rate.burst, now))
            tokens = min(self.rate.burst, tokens + (now - seen) * self.rate.per_second)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return allowed

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._buckets)
