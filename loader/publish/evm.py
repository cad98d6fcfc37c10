"""The EVM sink: publish reports to a ReportRegistry contract through web3 (the `chain` extra).

Import this module only when a chain is configured: it imports web3 (~0.6 s). Every call to the
node is bounded by the caller's deadline. Delivery is idempotent twice over: the contract ignores
a digest it already has, and we ask it (`lookup`) before sending anything. Before sending we
record the signed transaction's hash (the "intent") so that a publisher killed while waiting for
the receipt finds that transaction again after a restart instead of sending another.

The operator key is used only to sign, locally; it is never sent, logged or put in an error.
TRUSTED_LOADER_TEST_PAUSE_AFTER_SEND (seconds) pauses right after a transaction is sent, before
its receipt is recorded: the crash tests use it to kill the publisher in that window.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from loader.errors import ReportError
from loader.publish import recursion_limit_kept

with recursion_limit_kept():
    import requests
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
    from web3 import HTTPProvider, Web3
    from web3 import exceptions as w3x
    from web3.middleware import ExtraDataToPOAMiddleware

from loader.publish.keyfile import OperatorKey
from loader.publish.ledger import DeliveryRecord
from loader.publish.sinks import DeliveryError, SaveIntent
from loader.publish.subject import report_subject

log = logging.getLogger("trusted-loader")

ARTIFACT = "ReportRegistry.json"
TEST_PAUSE_ENV = "TRUSTED_LOADER_TEST_PAUSE_AFTER_SEND"
MAX_RPC_TIMEOUT = 30.0
GAS_MARGIN = 1.2
# Exceptions meaning "the contract reverted"; the embedded chain adds eth-tester's own.
REVERTS: list[type[Exception]] = [w3x.ContractLogicError]


@cache
def artifact() -> dict[str, Any]:
    """The compiled ReportRegistry (a copy of contracts/ReportRegistry.json, packaged)."""
    return json.loads(resources.files("loader.publish").joinpath(ARTIFACT).read_text("utf-8"))


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryError("publish timeout reached", unavailable=True)
    return left


@contextlib.contextmanager
def rpc(what: str) -> Iterator[None]:
    """Turn the exceptions of web3 and requests into one-line DeliveryErrors."""
    try:
        yield
    except DeliveryError:
        raise
    except (
        requests.ConnectionError,
        requests.Timeout,
        w3x.ProviderConnectionError,
        w3x.RequestTimedOut,
    ) as exc:
        raise DeliveryError(f"{what}: node unreachable ({type(exc).__name__})", unavailable=True) from None
    except w3x.TimeExhausted:
        raise DeliveryError(f"{what}: no receipt before the timeout", unavailable=True) from None
    except tuple(REVERTS) as exc:
        raise DeliveryError(f"{what}: the contract refused: {_first_line(exc)}", permanent=True) from None
    except requests.RequestException as exc:
        raise DeliveryError(f"{what}: HTTP request failed ({type(exc).__name__})", unavailable=True) from None
    except (w3x.Web3Exception, ValueError, KeyError) as exc:
        raise DeliveryError(f"{what}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text.strip() else type(exc).__name__


def connect(rpc_url: str, timeout: float = 10.0) -> Web3:
    """A Web3 client for a JSON-RPC endpoint over HTTP(S); requests time out after `timeout`."""
    if not rpc_url.startswith(("http://", "https://")):
        raise DeliveryError(
            f"--rpc-url: expected an http:// or https:// URL, found {rpc_url!r}", permanent=True
        )
    provider = HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None)
    return _with_middleware(Web3(provider))


def _with_middleware(w3: Web3) -> Web3:
    # BSC-family chains put more than 32 bytes in extraData; harmless elsewhere.
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    return w3


def account_of(key: OperatorKey) -> LocalAccount:
    try:
        return Account.from_key(key.secret())
    except Exception:
        raise DeliveryError("the account key is not a usable secp256k1 key", permanent=True) from None


def to_bytes32(digest: str) -> bytes:
    prefix, _, hexpart = digest.partition(":")
    if prefix != "sha256" or len(hexpart) != 64:
        raise ValueError(f"expected sha256:<64 hex digits>, found {digest!r}")
    return bytes.fromhex(hexpart)


@dataclass(frozen=True)
class Sent:
    tx_hash: str
    block: int
    receipt: Any


def send_transaction(
    w3: Web3,
    account: LocalAccount,
    fields: dict[str, Any],
    *,
    deadline: float,
    on_signed: Callable[[str, int], None] | None = None,
) -> Sent:
    """Fill chain id, nonce, gas and fees; sign locally; send; wait for a successful receipt."""
    with rpc("preparing the transaction"):
        tx: dict[str, Any] = {"from": account.address, "value": 0, **fields}
        tx["chainId"] = w3.eth.chain_id
        tx["nonce"] = w3.eth.get_transaction_count(account.address, "pending")
        tx["gas"] = int(w3.eth.estimate_gas(tx) * GAS_MARGIN)
        tx.update(_fees(w3))
    signed = account.sign_transaction(tx)
    tx_hash = "0x" + bytes(signed.hash).hex()
    if on_signed is not None:
        on_signed(tx_hash, tx["nonce"])
    with rpc("sending the transaction"):
        w3.eth.send_raw_transaction(signed.raw_transaction)
    log.info("sent transaction %s (nonce %d, gas %d)", tx_hash, tx["nonce"], tx["gas"])
    _test_pause()
    return wait_receipt(w3, tx_hash, deadline=deadline)


def _fees(w3: Web3) -> dict[str, int]:
    base = w3.eth.get_block("latest").get("baseFeePerGas")
    if base is None:
        return {"gasPrice": w3.eth.gas_price}
    try:
        tip = w3.eth.max_priority_fee
    except (w3x.Web3Exception, ValueError):
        tip = 10**9
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


def _test_pause() -> None:
    pause = os.environ.get(TEST_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def wait_receipt(w3: Web3, tx_hash: str, *, deadline: float) -> Sent:
    with rpc(f"waiting for {tx_hash}"):
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=_remaining(deadline), poll_latency=0.2)
    if receipt["status"] != 1:
        raise DeliveryError(f"transaction {tx_hash} reverted in block {receipt['blockNumber']}")
    return Sent(tx_hash, receipt["blockNumber"], receipt)


def deploy(w3: Web3, key: OperatorKey, *, deadline: float) -> tuple[str, str]:
    """Deploy a ReportRegistry; returns (contract address, transaction hash)."""
    account = account_of(key)
    sent = send_transaction(w3, account, {"data": artifact()["bytecode"]}, deadline=deadline)
    address = sent.receipt["contractAddress"]
    log.info("deployed ReportRegistry at %s in block %d", address, sent.block)
    return Web3.to_checksum_address(address), sent.tx_hash


@dataclass(frozen=True)
class Published:
    tx_hash: str
    block: int
    publisher: str
    subject: bytes
    report: bytes


class Registry:
    """Read access to a ReportRegistry at `address`, checked to be one."""

    def __init__(self, w3: Web3, address: str) -> None:
        if not Web3.is_address(address):
            raise DeliveryError(
                f"--contract: expected a 0x-prefixed 20-byte address, found {address!r}", permanent=True
            )
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=artifact()["abi"])
        self.event = self.contract.events.ReportPublished()

    def check(self) -> int:
        """Refuse anything but our contract's exact runtime code; return the chain id."""
        with rpc(f"reading the contract at {self.address}"):
            code = bytes(self.w3.eth.get_code(self.address))
            chain_id = self.w3.eth.chain_id
        if not code:
            raise DeliveryError(f"no contract at {self.address} on chain {chain_id}", permanent=True)
        if code != bytes.fromhex(artifact()["deployedBytecode"][2:]):
            raise DeliveryError(
                f"the contract at {self.address} on chain {chain_id} is not a ReportRegistry "
                "(its runtime code differs from contracts/ReportRegistry.json)",
                permanent=True,
            )
        return chain_id

    def lookup(self, digest: bytes) -> tuple[int, str, bytes]:
        with rpc("looking up the digest"):
            block, publisher, subject = self.contract.functions.lookup(digest).call()
        return block, publisher, bytes(subject)

    def find(self, digest: bytes) -> Published | None:
        """The ReportPublished event for `digest`, from the block the contract recorded."""
        block, publisher, subject = self.lookup(digest)
        if block == 0:
            return None
        with rpc(f"reading the event log of block {block}"):
            logs = self.w3.eth.get_logs(
                {
                    "address": self.address,
                    "topics": [self.event.topic, "0x" + digest.hex()],
                    "fromBlock": block,
                    "toBlock": block,
                }
            )
            events = [self.event.process_log(entry) for entry in logs]
        if len(events) != 1:
            raise DeliveryError(f"block {block}: expected one ReportPublished event, found {len(events)}")
        ev = events[0]
        return Published(
            tx_hash="0x" + bytes(ev["transactionHash"]).hex(),
            block=block,
            publisher=publisher,
            subject=subject,
            report=bytes(ev["args"]["report"]),
        )

    def fetch(self, digest: bytes) -> Published | None:
        """The published report, checked to hash to `digest`."""
        found = self.find(digest)
        if found is not None and hashlib.sha256(found.report).digest() != digest:
            raise DeliveryError(
                f"the report in transaction {found.tx_hash} does not hash to sha256:{digest.hex()}",
                permanent=True,
            )
        return found


class EvmSink:
    """Publishes to one ReportRegistry; connects (and checks the chain) on first use."""

    def __init__(
        self,
        rpc_url: str,
        contract: str,
        key: OperatorKey,
        *,
        chain_id: int | None = None,
        w3: Web3 | None = None,
    ) -> None:
        if not Web3.is_address(contract):
            raise DeliveryError(
                f"--contract: expected a 0x-prefixed 20-byte address, found {contract!r}", permanent=True
            )
        self.rpc_url, self.expected_chain = rpc_url, chain_id
        self.key = key
        self.id = "evm-" + contract.lower().removeprefix("0x")
        self.label = f"contract {Web3.to_checksum_address(contract)} via {_redact_url(rpc_url)}"
        self.contract = contract
        self._w3 = w3
        self._registry: Registry | None = None
        self.chain_id: int | None = None

    def _ready(self, deadline: float) -> Registry:
        if self._registry is None:
            w3 = self._w3 or connect(self.rpc_url, min(MAX_RPC_TIMEOUT, _remaining(deadline)))
            registry = Registry(w3, self.contract)
            chain_id = registry.check()
            if self.expected_chain is not None and chain_id != self.expected_chain:
                raise DeliveryError(
                    f"{self.label}: expected chain id {self.expected_chain}, the node is on {chain_id}",
                    permanent=True,
                    unavailable=True,
                )
            self._registry, self.chain_id = registry, chain_id
        return self._registry

    def deliver(
        self, report: bytes, record: DeliveryRecord, *, save_intent: SaveIntent, deadline: float
    ) -> dict[str, Any]:
        registry = self._ready(deadline)
        digest = hashlib.sha256(report).digest()
        found = registry.find(digest)
        if found is None and record.intent and record.intent.get("chain_id") == self.chain_id:
            found = self._resume(registry, digest, record.intent["tx_hash"], deadline)
        if found is not None:
            return self._receipt(found, already=True)
        try:
            subject = report_subject(report)
        except ReportError as exc:
            raise DeliveryError(
                f"the spooled file is not a report this loader publishes: {exc}", permanent=True
            ) from None
        data = registry.contract.encode_abi("publish", args=(digest, subject, report))

        def on_signed(tx_hash: str, nonce: int) -> None:
            save_intent({"tx_hash": tx_hash, "nonce": nonce, "chain_id": self.chain_id})

        sent = send_transaction(
            registry.w3,
            account_of(self.key),
            {"to": registry.address, "data": data},
            deadline=deadline,
            on_signed=on_signed,
        )
        found = registry.find(digest)
        if found is None:
            raise DeliveryError(f"transaction {sent.tx_hash} was mined but the registry has no entry")
        return self._receipt(found, already=found.tx_hash != sent.tx_hash)

    def _resume(self, registry: Registry, digest: bytes, tx_hash: str, deadline: float) -> Published | None:
        """After a crash: wait for our own earlier transaction if the node still has it."""
        with rpc(f"looking for transaction {tx_hash}"):
            try:
                tx = registry.w3.eth.get_transaction(tx_hash)
            except w3x.TransactionNotFound:
                return None
        log.info(
            "resuming: transaction %s from an earlier attempt is %s",
            tx_hash,
            "pending" if tx.get("blockNumber") is None else "mined",
        )
        with contextlib.suppress(DeliveryError):
            wait_receipt(registry.w3, tx_hash, deadline=deadline)
        return registry.find(digest)

    def _receipt(self, found: Published, *, already: bool) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "contract": self._registry.address if self._registry else self.contract,
            "tx_hash": found.tx_hash,
            "block": found.block,
            "publisher": found.publisher,
            "subject": found.subject.hex(),
            "already": already,
        }

    def close(self) -> None:
        self._registry = None


def _redact_url(url: str) -> str:
    """Only scheme, host and port: API keys ride in the userinfo, path or query of RPC URLs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"
