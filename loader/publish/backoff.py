"""Retry delays: exponential with a cap and jitter, so a fleet does not retry in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 2.0
    factor: float = 2.0
    cap: float = 900.0
    jitter: float = 0.25

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after `attempts` consecutive failures (attempts >= 1)."""
        raw = min(self.cap, self.base * self.factor ** max(0, min(attempts - 1, 64)))
        spread = (rng or random).uniform(1 - self.jitter, 1)
        return raw * spread
