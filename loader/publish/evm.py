"""The EVM sink: publish reports to a ReportRegistry contract through web3 (the `chain` extra).

Import this module only when a chain is configured: it imports web3 (~0.6 s). Every call to the
node is bounded by the caller's deadline, and every answer is checked (loader.publish.node): a
digest counts as published only when a ReportPublished log at the configured contract, on the
configured chain, holds bytes that hash to it, in a block with the required confirmations.
What a node merely claims (lookup's block number, a log with other bytes) counts for nothing.

Delivery is idempotent twice over: the contract ignores a digest it already has, and we look
for the log before sending anything. Before each transaction (and each replacement of a stuck
one, loader.publish.evmtx) we record its hash (the "intent") so that a publisher killed while
waiting finds those transactions again after a restart instead of sending another.

The operator key is used only to sign, locally; it is never sent, logged or put in an error.
TRUSTED_LOADER_TEST_PAUSE_AFTER_SEND (seconds) pauses right after a transaction is sent, before
its receipt is recorded: the crash tests use it to kill the publisher in that window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from loader.errors import ReportError
from loader.publish import recursion_limit_kept

with recursion_limit_kept():
    from eth_abi import decode as abi_decode
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
    from web3 import HTTPProvider, Web3
    from web3.middleware import ExtraDataToPOAMiddleware

from loader.publish.evmtx import (
    FEE_FIELDS,
    TEST_PAUSE_ENV,
    Attempts,
    Replacement,
    drive,
    known,
    send_transaction,
    wait_any,
)
from loader.publish.keyfile import OperatorKey
from loader.publish.ledger import DeliveryRecord
from loader.publish.node import (
    REVERTS,
    NodeError,
    address,
    fixed_bytes,
    mapping,
    node_label,
    redact_url,
    rpc,
    uint,
)
from loader.publish.sinks import DeliveryError, SaveIntent
from loader.publish.subject import report_subject

__all__ = ["REVERTS", "TEST_PAUSE_ENV", "DeliveryError", "NodeError", "rpc", "send_transaction"]

log = logging.getLogger("trusted-loader")

ARTIFACT = "ReportRegistry.json"
MAX_RPC_TIMEOUT = 30.0
MAX_CONFIRMATIONS = 10_000


@cache
def artifact() -> dict[str, Any]:
    """The compiled ReportRegistry (a copy of contracts/ReportRegistry.json, packaged)."""
    return json.loads(resources.files("loader.publish").joinpath(ARTIFACT).read_text("utf-8"))


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryError("publish timeout reached", unavailable=True)
    return left


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


def chain_id_of(w3: Web3) -> int:
    node = node_label(w3)
    with rpc(node, "eth_chainId"):
        return uint(w3.eth.chain_id, node, "eth_chainId", "result")


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


def deploy(w3: Web3, key: OperatorKey, *, deadline: float) -> tuple[str, str]:
    """Deploy a ReportRegistry; returns (contract address, transaction hash)."""
    account = account_of(key)
    sent = send_transaction(w3, account, {"data": artifact()["bytecode"]}, deadline=deadline)
    node = node_label(w3)
    contract = address(
        sent.receipt.get("contractAddress"), node, "eth_getTransactionReceipt", "contractAddress"
    )
    log.info("deployed ReportRegistry at %s in block %d", contract, sent.block)
    return contract, sent.tx_hash


@dataclass(frozen=True)
class Published:
    tx_hash: str
    block: int
    publisher: str
    subject: bytes
    report: bytes


class Registry:
    """Read access to a ReportRegistry at `address`, checked to be one; every answer checked."""

    def __init__(self, w3: Web3, contract: str) -> None:
        if not Web3.is_address(contract):
            raise DeliveryError(
                f"--contract: expected a 0x-prefixed 20-byte address, found {contract!r}", permanent=True
            )
        self.w3 = w3
        self.node = node_label(w3)
        self.address = Web3.to_checksum_address(contract)
        self.contract = w3.eth.contract(address=self.address, abi=artifact()["abi"])
        self.event = self.contract.events.ReportPublished()
        self.topic = bytes.fromhex(str(self.event.topic).removeprefix("0x"))

    def chain_id(self) -> int:
        return chain_id_of(self.w3)

    def check(self) -> int:
        """Refuse anything but our contract's exact runtime code; return the chain id."""
        chain_id = self.chain_id()
        with rpc(self.node, "eth_getCode"):
            code = fixed_bytes(self.w3.eth.get_code(self.address), 0, self.node, "eth_getCode", "result")
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
        """What the contract says (through the node): a hint where to look, never proof."""
        with rpc(self.node, "eth_call lookup"):
            answer = self.contract.functions.lookup(digest).call()
            if not isinstance(answer, list | tuple) or len(answer) != 3:
                raise NodeError(f"node {self.node}: eth_call lookup: expected 3 values, found {answer!r:.60}")
            block = uint(answer[0], self.node, "eth_call lookup", "blockNumber")
            publisher = address(answer[1], self.node, "eth_call lookup", "publisher")
            subject = fixed_bytes(answer[2], 32, self.node, "eth_call lookup", "subject")
        return block, publisher, subject

    def block_number(self) -> int:
        with rpc(self.node, "eth_blockNumber"):
            return uint(self.w3.eth.block_number, self.node, "eth_blockNumber", "result")

    def find(self, digest: bytes) -> Published | None:
        """The ReportPublished log for `digest`, checked: at this contract, with this event and
        digest, in the block the contract recorded, and holding bytes that hash to `digest`.
        None when the contract says it was never published; NodeError when the node's answers
        do not add up."""
        block, publisher, subject = self.lookup(digest)
        if block == 0:
            return None
        query = {
            "address": self.address,
            "topics": ["0x" + self.topic.hex(), "0x" + digest.hex()],
            "fromBlock": block,
            "toBlock": block,
        }
        with rpc(self.node, "eth_getLogs"):
            logs = self.w3.eth.get_logs(query)  # type: ignore[arg-type]
            if not isinstance(logs, list | tuple):
                raise NodeError(
                    f"node {self.node}: eth_getLogs: expected a list, found {type(logs).__name__}"
                )
            found = [self._checked_log(entry, digest, block, i) for i, entry in enumerate(logs)]
        if len(found) != 1:
            raise NodeError(
                f"node {self.node}: eth_getLogs: the contract records sha256:{digest.hex()} in block "
                f"{block}, but the node returned {len(found)} ReportPublished logs for it (expected one)"
            )
        [event] = found
        if (event.publisher, event.subject) != (publisher, subject):
            raise NodeError(
                f"node {self.node}: eth_getLogs: the log's publisher or subject differs from what "
                f"eth_call lookup returned for sha256:{digest.hex()}"
            )
        return event

    def _checked_log(self, entry: Any, digest: bytes, block: int, index: int) -> Published:
        method, node = "eth_getLogs", self.node
        where = f"log {index}"
        entry = mapping(entry, node, method, where)
        if entry.get("removed", False) is not False:
            raise NodeError(f"node {node}: {method}: {where}: removed (reorganised away)")
        if address(entry.get("address"), node, method, f"{where}.address") != self.address:
            raise NodeError(f"node {node}: {method}: {where}.address: not the contract {self.address}")
        topics = entry.get("topics")
        if not isinstance(topics, list | tuple) or len(topics) != 4:
            raise NodeError(f"node {node}: {method}: {where}.topics: expected 4 topics")
        topics = [fixed_bytes(t, 32, node, method, f"{where}.topics[{i}]") for i, t in enumerate(topics)]
        if topics[0] != self.topic or topics[1] != digest:
            raise NodeError(f"node {node}: {method}: {where}: not a ReportPublished log for this digest")
        if uint(entry.get("blockNumber"), node, method, f"{where}.blockNumber") != block:
            raise NodeError(f"node {node}: {method}: {where}.blockNumber: not the block asked for ({block})")
        tx_hash = fixed_bytes(entry.get("transactionHash"), 32, node, method, f"{where}.transactionHash")
        data = fixed_bytes(entry.get("data"), 0, node, method, f"{where}.data")
        try:
            (report,) = abi_decode(["bytes"], data, strict=True)
        except Exception:
            raise NodeError(f"node {node}: {method}: {where}.data: not an ABI-encoded bytes value") from None
        actual = hashlib.sha256(report).hexdigest()
        if actual != digest.hex():
            raise NodeError(
                f"node {node}: {method}: {where}: the logged report hashes to sha256:{actual}, "
                f"not sha256:{digest.hex()}: the node's answer is false"
            )
        if any(topics[3][:12]):
            raise NodeError(f"node {node}: {method}: {where}.topics[3]: not an address")
        publisher = Web3.to_checksum_address(topics[3][12:])
        return Published("0x" + tx_hash.hex(), block, publisher, topics[2], bytes(report))

    def fetch(self, digest: bytes) -> Published | None:
        """The published report, checked to hash to `digest` (see find)."""
        return self.find(digest)

    def confirmations(self, found: Published) -> int:
        """How many blocks (its own included) stand on `found`."""
        latest = self.block_number()
        if latest < found.block:
            raise NodeError(
                f"node {self.node}: eth_blockNumber: {latest}, "
                f"below the block {found.block} it logged the report in"
            )
        return latest - found.block + 1


class EvmSink:
    """Publishes to one ReportRegistry on one chain; connects (and checks the chain) on first use.

    Its id (the ledger key) is `evm-<chain id>-<contract>`: known up front when the chain id is
    configured, else after the first connection (`open`)."""

    def __init__(
        self,
        rpc_url: str,
        contract: str,
        key: OperatorKey,
        *,
        chain_id: int | None = None,
        w3: Web3 | None = None,
        confirmations: int = 1,
        replacement: Replacement | None = None,
    ) -> None:
        if not Web3.is_address(contract):
            raise DeliveryError(
                f"--contract: expected a 0x-prefixed 20-byte address, found {contract!r}", permanent=True
            )
        if not 1 <= confirmations <= MAX_CONFIRMATIONS:
            raise DeliveryError(
                f"confirmations: expected 1..{MAX_CONFIRMATIONS}, found {confirmations}", permanent=True
            )
        self.rpc_url, self.expected_chain = rpc_url, chain_id
        self.key = key
        self.contract = contract
        self.label = f"contract {Web3.to_checksum_address(contract)} via {redact_url(rpc_url)}"
        self.confirmations = confirmations
        self.replacement = replacement or Replacement()
        self._w3 = w3
        self._registry: Registry | None = None
        self.chain_id: int | None = chain_id

    @property
    def legacy_id(self) -> str:
        """The ledger key before the chain id was part of it (records are migrated on open)."""
        return "evm-" + self.contract.lower().removeprefix("0x")

    @property
    def id(self) -> str | None:
        if self.chain_id is None:
            return None
        return f"evm-{self.chain_id}-{self.contract.lower().removeprefix('0x')}"

    def open(self, deadline: float) -> None:
        self._ready(deadline)

    def migrated_id(self, record: DeliveryRecord) -> str:
        """The new ledger key of a legacy record: the chain its receipt or intent names, else
        the chain this sink is on (a record without either never reached a chain)."""
        chain = self.chain_id
        for source in (record.receipt, record.intent or {}):
            named = source.get("chain_id") if isinstance(source, dict) else None
            if isinstance(named, int) and not isinstance(named, bool) and named >= 0:
                chain = named
                break
        return f"evm-{chain}-{self.contract.lower().removeprefix('0x')}"

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
        intent = _intent_of(record, self.chain_id)
        stuck = False
        if found is None and intent is not None:
            found, stuck = self._resume(registry, digest, intent, deadline)
        if found is not None:
            return self._confirmed(registry, found, already=not _ours(found, intent))
        try:
            subject = report_subject(report)
        except ReportError as exc:
            raise DeliveryError(
                f"the spooled file is not a report this loader publishes: {exc}", permanent=True
            ) from None
        data = registry.contract.encode_abi("publish", args=(digest, subject, report))
        account = account_of(self.key)

        def on_attempt(attempts: Attempts) -> None:
            save_intent(attempts.intent(self.chain_id))

        carried = _carry_on(intent, account.address, registry.address, data) if stuck else None
        if carried is not None:
            sent = drive(
                registry.w3,
                account,
                carried,
                deadline=deadline,
                policy=self.replacement,
                on_attempt=on_attempt,
            )
        else:
            sent = send_transaction(
                registry.w3,
                account,
                {"to": registry.address, "data": data},
                deadline=deadline,
                policy=self.replacement,
                on_attempt=on_attempt,
            )
        found = registry.find(digest)
        if found is None:
            raise NodeError(
                f"node {registry.node}: eth_call lookup: transaction {sent.tx_hash} was mined "
                "but the registry has no entry"
            )
        return self._confirmed(registry, found, already=found.tx_hash != sent.tx_hash)

    def _resume(
        self, registry: Registry, digest: bytes, intent: Mapping[str, Any], deadline: float
    ) -> tuple[Published | None, bool]:
        """After a crash: wait (up to replace_after) for our earlier attempts if the node still
        knows one; (what the chain then shows, whether an attempt is still pending)."""
        hashes = [a["tx_hash"] for a in intent["attempts"]]
        if not any(known(registry.w3, h) for h in hashes):
            return None, False
        log.info("resuming: an earlier attempt is known to the node (%s)", ", ".join(hashes))
        until = min(deadline, time.monotonic() + self.replacement.replace_after)
        mined = wait_any(registry.w3, hashes, until=until)
        return registry.find(digest), mined is None

    def _confirmed(self, registry: Registry, found: Published, *, already: bool) -> dict[str, Any]:
        depth = registry.confirmations(found)
        if depth < self.confirmations:
            raise DeliveryError(
                f"sha256:{hashlib.sha256(found.report).hexdigest()} is in block {found.block} with "
                f"{depth} of the {self.confirmations} confirmations required; waiting"
            )
        return {
            "chain_id": self.chain_id,
            "contract": registry.address,
            "tx_hash": found.tx_hash,
            "block": found.block,
            "confirmations": depth,
            "publisher": found.publisher,
            "subject": found.subject.hex(),
            "already": already,
        }

    def close(self) -> None:
        self._registry = None


def _intent_of(record: DeliveryRecord, chain_id: int | None) -> dict[str, Any] | None:
    """The record's intent when it is for this chain, normalised to a list of attempts."""
    intent = record.intent
    if not isinstance(intent, dict) or intent.get("chain_id") != chain_id:
        return None
    attempts = intent.get("attempts")
    if not isinstance(attempts, list):
        attempts = [{"tx_hash": intent.get("tx_hash")}]
    good = [a for a in attempts if isinstance(a, dict) and _is_tx_hash(a.get("tx_hash"))]
    return {**intent, "attempts": good} if good else None


def _carry_on(intent: Mapping[str, Any] | None, sender: str, to: str, data: str) -> Attempts | None:
    """The stuck transaction of an earlier run, rebuilt from its intent to be replaced."""
    if intent is None:
        return None
    last = intent["attempts"][-1]
    fees = {k: last[k] for k in FEE_FIELDS if isinstance(last.get(k), int)}
    nonce, gas, chain = intent.get("nonce"), intent.get("gas"), intent.get("chain_id")
    if not fees or not all(isinstance(v, int) for v in (nonce, gas, chain)):
        return None
    tx = {"from": sender, "value": 0, "to": to, "data": data, "chainId": chain, "nonce": nonce, "gas": gas}
    return Attempts({**tx, **fees}, list(intent["attempts"]))


def _is_tx_hash(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 66 and value.startswith("0x")


def _ours(found: Published, intent: Mapping[str, Any] | None) -> bool:
    return intent is not None and any(a["tx_hash"] == found.tx_hash for a in intent["attempts"])
