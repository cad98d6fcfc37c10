"""The ReportRegistry contract and the EVM sink, on the embedded EVM (eth-tester / py-evm).

The artifact test recompiles the contract with solc-js (npm) when it is installed.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("web3", reason="the chain tests need the chain extra (web3)")
pytest.importorskip("eth_tester", reason="the embedded-chain tests need the chain-dev extra (eth-tester)")

from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from web3.exceptions import ContractLogicError

from loader.publish import embedded, evm, evmtx
from loader.publish.deliver import Delivery
from loader.publish.ledger import DeliveryRecord, Ledger
from loader.publish.sinks import DeliveryError
from loader.publish.spool import spool_report
from loader.publish.subject import subject_for
from tests.chain_helpers import REPO, make_report


class Crash(BaseException):
    """Stands in for the process dying at the test-pause point."""


@pytest.fixture(scope="module")
def chain() -> embedded.EmbeddedChain:
    return embedded.start()


@pytest.fixture(scope="module")
def registry(chain: embedded.EmbeddedChain) -> evm.Registry:
    address, _ = evm.deploy(chain.w3, chain.key, deadline=time.monotonic() + 60)
    return evm.Registry(chain.w3, address)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return [make_report(tmp_path_factory.mktemp(f"job{i}") / "demo") for i in range(3)]


def _publish_tx(chain: embedded.EmbeddedChain, registry: evm.Registry, digest: bytes, report: bytes) -> dict:
    data = registry.contract.encode_abi("publish", args=(digest, subject_for("t"), report))
    account = evm.account_of(chain.key)
    sent = evm.send_transaction(
        chain.w3, account, {"to": registry.address, "data": data}, deadline=time.monotonic() + 30
    )
    return sent.receipt


def _revert_data(exc: Exception) -> bytes:
    """The revert data, from web3's ContractLogicError or eth-tester's TransactionFailed."""
    if isinstance(exc, ContractLogicError):
        return bytes.fromhex(str(exc.data)[2:])
    text = str(exc.args[0]).removeprefix("execution reverted: ")
    return ast.literal_eval(text)


def _nonce(chain: embedded.EmbeddedChain) -> int:
    return chain.w3.eth.get_transaction_count(evm.account_of(chain.key).address)


# --- artifact ----------------------------------------------------------------------------------


def test_packaged_artifact_is_the_committed_one() -> None:
    committed = (REPO / "contracts" / "ReportRegistry.json").read_bytes()
    assert (REPO / "loader" / "publish" / "ReportRegistry.json").read_bytes() == committed
    doc = json.loads(committed)
    assert doc["evmVersion"] == "shanghai" and doc["compiler"]["version"].startswith("0.8.")
    assert {e["name"] for e in doc["abi"] if e.get("name")} >= {"publish", "lookup", "ReportPublished"}


def test_artifact_matches_a_fresh_solc_build() -> None:
    node = shutil.which("node")
    tools = Path(os.environ.get("TL_NODE_TOOLS", REPO / ".node-tools"))
    if node is None or not (tools / "node_modules" / "solc").is_dir():
        pytest.skip(f"solc-js not installed in {tools}/node_modules (run .ci/install-node-tools.sh)")
    committed = json.loads((REPO / "contracts" / "ReportRegistry.json").read_text())
    version = json.loads((tools / "node_modules" / "solc" / "package.json").read_text())["version"]
    if not committed["compiler"]["version"].startswith(version + "+"):
        pytest.skip(f"installed solc {version} is not the artifact's {committed['compiler']['version']}")
    built = subprocess.run(
        [node, str(REPO / "contracts" / "build.mjs"), "--stdout"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TL_NODE_TOOLS": str(tools)},
        check=True,
    )
    assert json.loads(built.stdout) == committed


# --- contract ------------------------------------------------------------------------------------


def test_publish_emits_one_event_and_records_the_block(chain, registry, reports) -> None:
    report = reports[0]
    digest = hashlib.sha256(report).digest()
    assert registry.lookup(digest)[0] == 0
    receipt = _publish_tx(chain, registry, digest, report)
    events = registry.event.process_receipt(receipt)
    assert len(events) == 1
    args = events[0]["args"]
    publisher = evm.account_of(chain.key).address
    assert (bytes(args["digest"]), bytes(args["subject"]), args["publisher"], bytes(args["report"])) == (
        digest,
        subject_for("t"),
        publisher,
        report,
    )
    assert registry.lookup(digest) == (receipt["blockNumber"], publisher, subject_for("t"))
    assert registry.fetch(digest).report == report


def test_publishing_the_same_digest_again_is_harmless(chain, registry, reports) -> None:
    report = reports[1]
    digest = hashlib.sha256(report).digest()
    first = _publish_tx(chain, registry, digest, report)
    second = _publish_tx(chain, registry, digest, report)
    assert second["status"] == 1 and second["logs"] == []
    assert registry.lookup(digest)[0] == first["blockNumber"]
    assert registry.contract.functions.publish(digest, subject_for("t"), report).call() is False


def test_contract_refuses_bytes_that_do_not_hash_to_the_digest(chain, registry, reports) -> None:
    report = reports[2]
    digest = hashlib.sha256(report).digest()
    account = evm.account_of(chain.key).address
    selector = keccak(text="DigestMismatch(bytes32,bytes32)")[:4]
    for position in range(0, len(report) * 8, max(1, len(report) * 8 // 48)):
        tampered = bytearray(report)
        tampered[position // 8] ^= 1 << (position % 8)
        call = registry.contract.functions.publish(digest, subject_for("t"), bytes(tampered))
        with pytest.raises((ContractLogicError, TransactionFailed)) as info:
            call.call({"from": account})
        expected = selector + digest + hashlib.sha256(tampered).digest()
        assert _revert_data(info.value) == expected
    data = registry.contract.encode_abi("publish", args=(digest, subject_for("t"), report + b"\x00"))
    with pytest.raises(DeliveryError, match="contract refused") as info:
        evm.send_transaction(
            chain.w3,
            evm.account_of(chain.key),
            {"to": registry.address, "data": data},
            deadline=time.monotonic() + 30,
        )
    assert info.value.permanent
    assert registry.lookup(digest)[0] == 0


def test_registry_refuses_an_address_without_our_code(chain, registry) -> None:
    with pytest.raises(DeliveryError, match="no contract at"):
        evm.Registry(chain.w3, evm.account_of(chain.key).address).check()
    assert registry.check() == chain.chain_id
    with pytest.raises(DeliveryError, match="expected a 0x-prefixed"):
        evm.Registry(chain.w3, "0x1234")


# --- the EVM sink ------------------------------------------------------------------------------


def _fresh_report(tmp_path: Path) -> bytes:
    return make_report(tmp_path / "demo")


def test_sink_delivers_and_is_idempotent_when_the_ledger_is_lost(chain, registry, tmp_path) -> None:
    report = _fresh_report(tmp_path)
    ledger = Ledger(tmp_path / "spool")
    spool_report(ledger.spool_dir, report)
    sink = evm.EvmSink("embedded", registry.address, chain.key, w3=chain.w3)
    [first] = Delivery(ledger, [sink]).run(30)
    assert first.delivered and first.receipt["already"] is False
    assert first.receipt["subject"] == subject_for("demo-order-1").hex()
    entry = ledger.entries()[0]
    ledger.write(entry, DeliveryRecord(sink.id, entry.digest))  # the ledger forgot
    nonce = _nonce(chain)
    [again] = Delivery(ledger, [sink]).run(30)
    assert again.delivered and again.receipt["already"] is True
    assert again.receipt["tx_hash"] == first.receipt["tx_hash"]
    assert _nonce(chain) == nonce  # checked the chain, sent nothing


def test_crash_after_send_resumes_without_a_second_transaction(
    chain, registry, tmp_path, monkeypatch
) -> None:
    report = _fresh_report(tmp_path)
    ledger = Ledger(tmp_path / "spool")
    spool_report(ledger.spool_dir, report)
    sink = evm.EvmSink("embedded", registry.address, chain.key, w3=chain.w3)

    def crash() -> None:
        raise Crash

    monkeypatch.setattr(evmtx, "_test_pause", crash)
    with pytest.raises(Crash):
        Delivery(ledger, [sink]).run(30)
    record = ledger.record(ledger.entries()[0], sink.id)
    assert record.state == "pending" and record.intent is not None
    monkeypatch.undo()
    nonce = _nonce(chain)
    [outcome] = Delivery(ledger, [sink]).run(30)
    assert outcome.delivered and outcome.receipt["tx_hash"] == record.intent["tx_hash"]
    assert _nonce(chain) == nonce
    digest = hashlib.sha256(report).digest()
    logs = chain.w3.eth.get_logs(
        {
            "address": registry.address,
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [registry.event.topic, digest],
        }
    )
    assert len(logs) == 1


def test_sink_refuses_a_node_on_another_chain(chain, registry, tmp_path) -> None:
    ledger = Ledger(tmp_path / "spool")
    spool_report(ledger.spool_dir, b"not even a report")
    sink = evm.EvmSink("embedded", registry.address, chain.key, w3=chain.w3, chain_id=chain.chain_id + 1)
    [outcome] = Delivery(ledger, [sink]).run(5)
    assert not outcome.delivered and f"expected chain id {chain.chain_id + 1}" in outcome.detail


def test_spooled_bytes_that_are_not_a_report_are_not_published(chain, registry, tmp_path) -> None:
    ledger = Ledger(tmp_path / "spool")
    spool_report(ledger.spool_dir, b"not a report")
    sink = evm.EvmSink("embedded", registry.address, chain.key, w3=chain.w3)
    nonce = _nonce(chain)
    [outcome] = Delivery(ledger, [sink]).run(5)
    assert not outcome.delivered and "report" in outcome.detail
    assert _nonce(chain) == nonce


def test_demo_publishes_to_the_embedded_chain_and_fetches_back(tmp_path) -> None:
    from tests.chain_helpers import cli

    done = cli("demo", "--workdir", str(tmp_path / "demo"))
    assert done.returncode == 0, done.stderr
    assert "byte-identical, verify OK" in done.stdout
    tx = next(line for line in done.stdout.splitlines() if line.strip().startswith("publish"))
    assert " tx 0x" in tx
    assert (tmp_path / "demo" / "report.fetched.cbor").read_bytes() == (
        tmp_path / "demo" / "report.cbor"
    ).read_bytes()
