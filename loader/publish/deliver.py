"""Deliver pending spooled reports to sinks, retrying with backoff until a deadline.

Each attempt's outcome is written to the ledger at once, so a restart (or the next `run`, or
`trusted-loader publish`) continues where this one stopped. Between rounds we wait with an
in-process backoff; the ledger keeps a persisted one (next_attempt) that `respect_schedule`
honours, for periodic runs that should not hammer a node that is down.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loader.errors import PublishError
from loader.publish.backoff import Backoff
from loader.publish.ledger import DeliveryRecord, Ledger, SpoolEntry
from loader.publish.sinks import DeliveryError, Sink

log = logging.getLogger("trusted-loader")

PERSISTED = Backoff(base=30.0, cap=3600.0)
IN_PROCESS = Backoff(base=0.5, cap=10.0)


@dataclass(frozen=True)
class Outcome:
    sink: str
    digest: str
    delivered: bool
    detail: str
    receipt: dict[str, Any] = field(default_factory=dict)
    node_error: bool = False


@dataclass
class Delivery:
    ledger: Ledger
    sinks: Sequence[Sink]
    only: Collection[str] | None = None
    respect_schedule: bool = False
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    _open_errors: dict[int, DeliveryError] = field(default_factory=dict)
    _migrated: set[int] = field(default_factory=set)

    def run(self, timeout: float) -> list[Outcome]:
        """Deliver until nothing retryable is pending or `timeout` seconds have passed."""
        deadline = self.clock() + timeout
        with self.ledger.lock(timeout):
            rounds = 0
            while self._round(deadline):
                rounds += 1
                pause = IN_PROCESS.delay(rounds, self.rng)
                if self.clock() + pause >= deadline:
                    break
                self.sleep(pause)
        return self.outcomes()

    def _targets(self, sink: Sink) -> list[tuple[SpoolEntry, DeliveryRecord]]:
        assert sink.id is not None
        return [(e, r) for e, r in self.ledger.pending(sink.id) if self.only is None or e.hex in self.only]

    def _open(self, sink: Sink, deadline: float) -> bool:
        """Connect a sink that needs it (its id may depend on what it finds, e.g. the chain id)
        and move records kept under its legacy ledger key; False when its id is still unknown."""
        opener = getattr(sink, "open", None)
        if opener is not None:
            try:
                opener(deadline)
                self._open_errors.pop(id(sink), None)
            except DeliveryError as exc:
                self._open_errors[id(sink)] = exc
                if sink.id is None:
                    log.warning("%s: %s", sink.label, exc)
                    return False
        legacy = getattr(sink, "legacy_id", None)
        if legacy and sink.id is not None and id(sink) not in self._migrated:
            self.ledger.migrate(legacy, sink.migrated_id)  # type: ignore[attr-defined]
            self._migrated.add(id(sink))
        return sink.id is not None

    def _round(self, deadline: float) -> bool:
        """One pass over every sink's pending reports; True when a retry could help."""
        retry = False
        for sink in self.sinks:
            if not self._open(sink, deadline):
                retry |= not self._open_errors[id(sink)].permanent
                continue
            for entry, record in self._targets(sink):
                if self.respect_schedule and record.next_attempt > time.time():
                    continue
                if self.clock() >= deadline:
                    return False
                try:
                    self._one(sink, entry, record, deadline)
                except DeliveryError as exc:
                    retry |= not exc.permanent
                    if exc.unavailable:
                        break
        return retry

    def _one(self, sink: Sink, entry: SpoolEntry, record: DeliveryRecord, deadline: float) -> None:
        try:
            report = entry.read()
        except PublishError as exc:
            self._failed(entry, record, DeliveryError(str(exc), permanent=True))
            raise DeliveryError(str(exc), permanent=True) from exc
        current = record

        def save_intent(intent: dict[str, Any]) -> None:
            nonlocal current
            current = self.ledger.write(entry, replace(current, intent=intent))

        try:
            receipt = sink.deliver(report, current, save_intent=save_intent, deadline=deadline)
        except DeliveryError as exc:
            self._failed(entry, current, exc)
            raise
        self.ledger.write(
            entry,
            replace(
                current,
                state="delivered",
                receipt=receipt,
                last_error=None,
                error_kind=None,
                next_attempt=0.0,
            ),
        )
        log.info(
            "%s delivered to %s%s",
            entry.digest,
            sink.label,
            " (already there)" if receipt.get("already") else "",
        )

    def _failed(self, entry: SpoolEntry, record: DeliveryRecord, exc: DeliveryError) -> None:
        attempts = record.attempts + 1
        wait = PERSISTED.delay(attempts, self.rng)
        self.ledger.write(
            entry,
            replace(
                record,
                attempts=attempts,
                last_error=str(exc),
                error_kind=exc.kind,
                next_attempt=time.time() + wait,
            ),
        )
        log.warning("%s not delivered (attempt %d): %s", entry.digest, attempts, exc)

    def outcomes(self) -> list[Outcome]:
        result = []
        for sink in self.sinks:
            for entry in self.ledger.entries():
                if self.only is not None and entry.hex not in self.only:
                    continue
                if sink.id is None:  # never reached: nothing recorded under a key
                    exc = self._open_errors.get(id(sink))
                    detail = str(exc) if exc else "not attempted"
                    node = bool(exc and exc.node_error)
                    result.append(Outcome(sink.label, entry.digest, False, detail, node_error=node))
                    continue
                record = self.ledger.record(entry, sink.id)
                detail = (
                    _describe(record.receipt) if record.delivered else (record.last_error or "not attempted")
                )
                node = not record.delivered and record.error_kind == "node"
                result.append(Outcome(sink.id, entry.digest, record.delivered, detail, record.receipt, node))
        return result


def _describe(receipt: dict[str, Any]) -> str:
    if "tx_hash" in receipt:
        return f"tx {receipt['tx_hash']} in block {receipt['block']} on chain {receipt['chain_id']}"
    return ", ".join(f"{k}={v}" for k, v in sorted(receipt.items()))
