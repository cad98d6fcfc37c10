"""Sending a transaction that gets mined: sign locally, send, and replace it while it is stuck.

A transaction not mined within `replace_after` seconds is re-signed with the same nonce and fees
raised by FEE_BUMP (above the 10 % most nodes require to accept a replacement), at most
`max_replacements` times, so the fee a publisher can reach is bounded (1.25 ** max_replacements
times the first quote). Every attempt is reported to `on_attempt` before it is sent, so the
ledger holds each transaction hash that may land; any of them being mined ends the wait.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loader.publish import recursion_limit_kept
from loader.publish.node import NodeError, mapping, node_label, rpc, uint
from loader.publish.sinks import DeliveryError

with recursion_limit_kept():
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3 import exceptions as w3x

log = logging.getLogger("trusted-loader")

TEST_PAUSE_ENV = "TRUSTED_LOADER_TEST_PAUSE_AFTER_SEND"
GAS_MARGIN = 1.2
FEE_BUMP = 1.25
POLL = 0.2
FEE_FIELDS = ("maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")


@dataclass(frozen=True)
class Replacement:
    """When and how often a stuck transaction is replaced."""

    replace_after: float = 30.0
    max_replacements: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.replace_after <= 3600 or not 0 <= self.max_replacements <= 10:
            raise ValueError(f"expected replace_after in (0, 3600] and max_replacements 0..10, found {self}")


@dataclass(frozen=True)
class Sent:
    tx_hash: str
    block: int
    receipt: Any


@dataclass
class Attempts:
    """The transaction being driven: its fixed fields and every signed attempt so far."""

    tx: dict[str, Any]
    hashes: list[dict[str, Any]] = field(default_factory=list)

    def intent(self, chain_id: int | None) -> dict[str, Any]:
        last = self.hashes[-1]["tx_hash"] if self.hashes else None
        keep = {k: self.tx[k] for k in ("nonce", "gas", "to") if k in self.tx}
        return {"chain_id": chain_id, "tx_hash": last, **keep, "attempts": list(self.hashes)}


OnAttempt = Callable[[Attempts], None]


def prepare(w3: Web3, account: LocalAccount, fields: dict[str, Any]) -> dict[str, Any]:
    """Fill chain id, nonce, gas and fees from the node, each answer checked."""
    node = node_label(w3)
    tx: dict[str, Any] = {"from": account.address, "value": 0, **fields}
    with rpc(node, "eth_chainId"):
        tx["chainId"] = uint(w3.eth.chain_id, node, "eth_chainId", "result")
    with rpc(node, "eth_getTransactionCount"):
        tx["nonce"] = uint(
            w3.eth.get_transaction_count(account.address, "pending"),
            node,
            "eth_getTransactionCount",
            "result",
        )
    with rpc(node, "eth_estimateGas"):
        estimate = uint(w3.eth.estimate_gas(tx), node, "eth_estimateGas", "result")  # type: ignore[arg-type]
    if not 21_000 <= estimate <= 60_000_000:
        raise NodeError(f"node {node}: eth_estimateGas: {estimate} gas is not a plausible estimate")
    tx["gas"] = int(estimate * GAS_MARGIN)
    tx.update(_fees(w3, node))
    return tx


def _fees(w3: Web3, node: str) -> dict[str, int]:
    with rpc(node, "eth_getBlockByNumber"):
        block = mapping(w3.eth.get_block("latest"), node, "eth_getBlockByNumber", "result")
        base = block.get("baseFeePerGas")
    if base is None:
        with rpc(node, "eth_gasPrice"):
            return {"gasPrice": uint(w3.eth.gas_price, node, "eth_gasPrice", "result")}
    base = uint(base, node, "eth_getBlockByNumber", "baseFeePerGas")
    try:
        with rpc(node, "eth_maxPriorityFeePerGas"):
            tip = uint(w3.eth.max_priority_fee, node, "eth_maxPriorityFeePerGas", "result")
    except DeliveryError:
        tip = 10**9
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


def bumped(tx: dict[str, Any]) -> dict[str, Any]:
    """The same transaction with every fee raised by FEE_BUMP (rounded up, at least +1 wei)."""
    out = dict(tx)
    for name in FEE_FIELDS:
        if name in tx:
            out[name] = max(tx[name] + 1, -(-tx[name] * 5 // 4))
    return out


def drive(
    w3: Web3,
    account: LocalAccount,
    attempts: Attempts,
    *,
    deadline: float,
    policy: Replacement,
    on_attempt: OnAttempt | None = None,
) -> Sent:
    """Send attempts.tx (and replacements) until one of its attempts is mined or time runs out."""
    node = node_label(w3)
    while True:
        replacing = len(attempts.hashes) > 0
        if len(attempts.hashes) <= policy.max_replacements:
            tx = bumped(attempts.tx) if replacing else attempts.tx
            signed = account.sign_transaction(tx)
            tx_hash = "0x" + bytes(signed.hash).hex()
            attempts.tx = tx
            attempts.hashes.append(
                {"tx_hash": tx_hash, "sent_at": time.time(), **{k: tx[k] for k in FEE_FIELDS if k in tx}}
            )
            if on_attempt is not None:
                on_attempt(attempts)
            try:
                with rpc(node, "eth_sendRawTransaction"):
                    w3.eth.send_raw_transaction(signed.raw_transaction)
            except NodeError:
                raise
            except DeliveryError as exc:
                if not replacing:
                    raise
                # "nonce too low" / "already known": an earlier attempt may have been mined.
                log.warning("replacement %s not accepted: %s", tx_hash, exc)
            else:
                what = "replaced the stuck transaction with" if replacing else "sent transaction"
                log.info("%s %s (nonce %d, gas %d)", what, tx_hash, tx["nonce"], tx["gas"])
            _test_pause()
            wait = policy.replace_after
        else:
            wait = deadline - time.monotonic()
        sent = wait_any(
            w3, [a["tx_hash"] for a in attempts.hashes], until=min(deadline, time.monotonic() + wait)
        )
        if sent is not None:
            return sent
        if time.monotonic() >= deadline:
            raise DeliveryError(
                f"node {node}: no receipt for {attempts.hashes[-1]['tx_hash']} "
                f"({len(attempts.hashes)} attempt(s)) before the timeout",
                unavailable=True,
            )


def send_transaction(
    w3: Web3,
    account: LocalAccount,
    fields: dict[str, Any],
    *,
    deadline: float,
    policy: Replacement | None = None,
    on_attempt: OnAttempt | None = None,
) -> Sent:
    """Prepare, sign locally, send, replace while stuck; the successful receipt."""
    attempts = Attempts(prepare(w3, account, fields))
    return drive(
        w3, account, attempts, deadline=deadline, policy=policy or Replacement(), on_attempt=on_attempt
    )


def receipt_of(w3: Web3, tx_hash: str) -> Sent | None:
    """The checked receipt of `tx_hash`, None while it is not mined; refuses a reverted one."""
    node = node_label(w3)
    with rpc(node, "eth_getTransactionReceipt"):
        try:
            receipt = w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except w3x.TransactionNotFound:
            return None
        receipt = mapping(receipt, node, "eth_getTransactionReceipt", "result")
        block = receipt.get("blockNumber")
        if block is None:
            return None
        block = uint(block, node, "eth_getTransactionReceipt", "blockNumber")
        status = uint(receipt.get("status"), node, "eth_getTransactionReceipt", "status")
    if status != 1:
        raise DeliveryError(f"transaction {tx_hash} reverted in block {block}")
    return Sent(tx_hash, block, receipt)


def wait_any(w3: Web3, hashes: list[str], *, until: float) -> Sent | None:
    """The first of `hashes` to be mined, polling until `until` (monotonic); None if none was."""
    while True:
        for tx_hash in hashes:
            sent = receipt_of(w3, tx_hash)
            if sent is not None:
                return sent
        if time.monotonic() + POLL > until:
            return None
        time.sleep(POLL)


def known(w3: Web3, tx_hash: str) -> bool:
    """Whether the node knows `tx_hash` (pending or mined)."""
    node = node_label(w3)
    with rpc(node, "eth_getTransactionByHash"):
        try:
            return w3.eth.get_transaction(tx_hash) is not None  # type: ignore[arg-type]
        except w3x.TransactionNotFound:
            return False


def _test_pause() -> None:
    pause = os.environ.get(TEST_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))
