"""Publishing against a node that lies (tests/lying_node.py, a real HTTP server in front of anvil),
and a transaction stuck in anvil's pool that must be replaced.

Nothing a node says makes a report "delivered" unless its bytes, logged at our contract, hash to
its digest; malformed answers are one-line errors naming the node and the method (exit 2), never
a traceback and never "not published"; once the honest node answers, the report is delivered.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("web3", reason="the chain tests need the chain extra (web3)")

from loader.publish import evm
from loader.publish.deliver import Delivery
from loader.publish.evmtx import Replacement
from loader.publish.keyfile import read_account_key
from loader.publish.ledger import Ledger
from loader.publish.node import NodeError
from tests.chain_helpers import Anvil, cli, key_file, require_anvil, rpc
from tests.lying_node import LyingNode
from tests.test_chain_anvil import deploy, only_report, record, spool_job

EXIT_NODE_ERROR = 2


@pytest.fixture(scope="module")
def anvil():
    node = Anvil(require_anvil()).start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def setup(anvil, tmp_path_factory):
    """A registry on anvil and one spooled report (not yet published)."""
    tmp = tmp_path_factory.mktemp("hostile")
    key = key_file(tmp)
    contract = deploy(anvil, key)
    spool = spool_job(tmp / "job")
    return key, contract, spool


def _fresh_spool(spool: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "spool"
    copy.mkdir(parents=True)
    for path in spool.glob("*.cbor"):
        shutil.copy2(path, copy / path.name)
    return copy


def _no_traceback(done) -> None:
    assert "Traceback" not in done.stderr and 'File "' not in done.stderr, done.stderr


def test_a_node_claiming_the_digest_with_other_bytes_gets_nothing_delivered(anvil, setup, tmp_path) -> None:
    key, contract, spool = setup
    spool = _fresh_spool(spool, tmp_path)
    digest_hex, report = only_report(spool)
    nonce = anvil.nonce()
    with LyingNode(anvil.url, "claim") as liar:
        args = ["--rpc-url", liar.url, "--contract", contract, "--account-key-file", str(key)]
        lied = cli("publish", "--spool", str(spool), *args, "--timeout", "2")
        assert lied.returncode == EXIT_NODE_ERROR, lied.stderr
        _no_traceback(lied)
        assert f"node {liar.url}: eth_getLogs" in lied.stderr and "the node's answer is false" in lied.stderr
        pending = record(spool, digest_hex, contract)
        assert pending["state"] == "pending" and pending["error_kind"] == "node"
        assert anvil.nonce() == nonce  # and nothing was sent on the liar's word

        out = tmp_path / "fetched.cbor"
        fetch_args = ["--rpc-url", liar.url, "--contract", contract, "--digest", f"sha256:{digest_hex}"]
        fetched = cli("report", "fetch", *fetch_args, "-o", str(out))
        assert fetched.returncode == EXIT_NODE_ERROR and not out.exists(), fetched.stderr
        assert "never published" not in fetched.stderr and len(fetched.stderr.strip().splitlines()) == 1

        liar.mode = "honest"  # the honest node is back
        honest = cli("publish", "--spool", str(spool), *args)
        assert honest.returncode == 0, honest.stderr
        assert record(spool, digest_hex, contract)["state"] == "delivered"
        fetched = cli("report", "fetch", *fetch_args, "-o", str(out))
        assert fetched.returncode == 0, fetched.stderr
        assert out.read_bytes() == report


@pytest.mark.parametrize(
    ("mode", "method"),
    [
        ("log-address", "eth_getLogs"),
        ("log-fields", "eth_getLogs"),
        ("chain-id", "eth_chainId"),
        ("block-number", "eth_blockNumber"),
        ("not-json", "eth_chainId"),
        ("drop", "eth_chainId"),
    ],
)
def test_malformed_answers_are_one_line_errors_then_the_honest_node_delivers(
    anvil, setup, tmp_path, mode, method
) -> None:
    key, contract, spool = setup
    spool = _fresh_spool(spool, tmp_path)
    digest_hex, report = only_report(spool)
    # Published honestly beforehand (through anvil), so the lookups find a block and read logs.
    [first] = Delivery(
        Ledger(_fresh_spool(spool, tmp_path / "direct")), [_sink(anvil.url, contract, key)]
    ).run(30)
    assert first.delivered, first.detail
    with LyingNode(anvil.url, mode) as liar:
        [outcome] = Delivery(Ledger(spool), [_sink(liar.url, contract, key)]).run(1.5)
        assert not outcome.delivered
        assert f"node {liar.url}: {method}" in outcome.detail and "\n" not in outcome.detail
        assert outcome.node_error is (mode != "drop"), outcome.detail
        liar.mode = "honest"
        [outcome] = Delivery(Ledger(spool), [_sink(liar.url, contract, key)]).run(30)
    assert outcome.delivered and outcome.receipt["already"] is True
    assert outcome.receipt["tx_hash"] == first.receipt["tx_hash"]
    found = evm.Registry(evm.connect(anvil.url), contract).fetch(bytes.fromhex(digest_hex))
    assert found is not None and found.report == report


def _sink(url: str, contract: str, key: Path, **kw) -> evm.EvmSink:
    return evm.EvmSink(url, contract, read_account_key(key), chain_id=31337, **kw)


def test_cli_on_a_log_whose_address_is_a_list_says_node_error_not_a_traceback(anvil, setup, tmp_path) -> None:
    key, contract, spool = setup
    spool = _fresh_spool(spool, tmp_path)
    digest_hex, _ = only_report(spool)
    [first] = Delivery(
        Ledger(_fresh_spool(spool, tmp_path / "direct")), [_sink(anvil.url, contract, key)]
    ).run(30)
    assert first.delivered
    with LyingNode(anvil.url, "log-address") as liar:
        out = tmp_path / "out.cbor"
        fetched = cli(
            "report", "fetch", "--rpc-url", liar.url, "--contract", contract,
            "--digest", f"sha256:{digest_hex}", "-o", str(out),
        )  # fmt: skip
        assert fetched.returncode == EXIT_NODE_ERROR and not out.exists()
        _no_traceback(fetched)
        assert f"node {liar.url}: eth_getLogs: malformed answer" in fetched.stderr
        args = ["--rpc-url", liar.url, "--contract", contract, "--account-key-file", str(key), "--json"]
        published = cli("publish", "--spool", str(spool), *args, "--timeout", "2")
        assert published.returncode == EXIT_NODE_ERROR, published.stderr
        _no_traceback(published)
        [entry] = json.loads(published.stdout)["reports"]
        assert entry["delivered"] is False and entry["node_error"] is True


def test_confirmations_are_waited_for(anvil, setup, tmp_path) -> None:
    key, contract, spool = setup
    spool = _fresh_spool(spool, tmp_path)
    Delivery(Ledger(_fresh_spool(spool, tmp_path / "direct")), [_sink(anvil.url, contract, key)]).run(30)
    [waiting] = Delivery(Ledger(spool), [_sink(anvil.url, contract, key, confirmations=50)]).run(1)
    assert not waiting.delivered and "of the 50 confirmations required" in waiting.detail
    rpc(anvil.url, "anvil_mine", [hex(50)])
    [done] = Delivery(Ledger(spool), [_sink(anvil.url, contract, key, confirmations=50)]).run(5)
    assert done.delivered and done.receipt["confirmations"] >= 50


def test_a_legacy_ledger_record_is_rekeyed_and_checked_again(anvil, setup, tmp_path) -> None:
    key, contract, spool = setup
    spool = _fresh_spool(spool, tmp_path)
    digest_hex, _ = only_report(spool)
    legacy = spool / f"{digest_hex}.evm-{contract.lower()[2:]}.json"
    old = {
        "format": "trusted-loader/delivery/v1", "sink": legacy.name.split(".")[1],
        "digest": f"sha256:{digest_hex}", "state": "delivered", "attempts": 0, "last_error": None,
        "next_attempt": 0, "updated": "", "intent": None,
        "receipt": {"chain_id": 204, "tx_hash": "0x" + "cd" * 32},
    }  # fmt: skip
    legacy.write_text(json.dumps(old))
    [outcome] = Delivery(Ledger(spool), [_sink(anvil.url, contract, key)]).run(30)
    assert outcome.delivered and outcome.sink == f"evm-31337-{contract.lower()[2:]}"
    assert not legacy.exists()
    moved = json.loads((spool / f"{digest_hex}.evm-204-{contract.lower()[2:]}.json").read_text())
    assert moved["state"] == "pending" and moved["receipt"]["chain_id"] == 204  # its own chain, re-checked


def test_a_stuck_underpriced_transaction_is_replaced_and_both_attempts_are_in_the_ledger(tmp_path) -> None:
    node = Anvil(require_anvil()).start()
    try:
        key = key_file(tmp_path)
        contract = deploy(node, key)
        spool = spool_job(tmp_path / "job")
        digest_hex, report = only_report(spool)
        rpc(node.url, "evm_setAutomine", [False])
        sink = _sink(node.url, contract, key, replacement=Replacement(replace_after=1.0, max_replacements=2))
        outcomes: list = []
        publisher = threading.Thread(target=lambda: outcomes.extend(Delivery(Ledger(spool), [sink]).run(60)))
        publisher.start()
        first = _wait_for_attempts(spool, digest_hex, contract, 1)[0]
        _wait_in_pool(node, first["tx_hash"])
        # Price the first attempt out: the next block's base fee is above its maxFeePerGas.
        rpc(node.url, "anvil_setNextBlockBaseFeePerGas", [hex(first["maxFeePerGas"] + 1)])
        rpc(node.url, "evm_mine")
        assert node.logs(contract, digest_hex) == []  # really stuck: mined around, not included
        attempts = _wait_for_attempts(spool, digest_hex, contract, 2)
        _wait_in_pool(node, attempts[1]["tx_hash"])  # the replacement took its place
        rpc(node.url, "evm_mine")
        publisher.join(60)
        [outcome] = outcomes
        assert outcome.delivered, outcome.detail
        delivered = record(spool, digest_hex, contract)
        assert [a["tx_hash"] for a in delivered["intent"]["attempts"]][:2] == [a["tx_hash"] for a in attempts]
        assert delivered["intent"]["attempts"][1]["maxFeePerGas"] > first["maxFeePerGas"]
        assert delivered["receipt"]["tx_hash"] == attempts[1]["tx_hash"]
        assert node.nonce() == 2 and len(node.logs(contract, digest_hex)) == 1
        found = evm.Registry(evm.connect(node.url), contract).fetch(bytes.fromhex(digest_hex))
        assert found is not None and found.report == report
    finally:
        node.stop()


def _wait_in_pool(node: Anvil, tx_hash: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pending = rpc(node.url, "txpool_content")["pending"]  # type: ignore[index]
        if any(tx["hash"] == tx_hash for by_nonce in pending.values() for tx in by_nonce.values()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{tx_hash} never reached the pool")


def _wait_for_attempts(spool: Path, digest_hex: str, contract: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            attempts = (record(spool, digest_hex, contract)["intent"] or {}).get("attempts", [])
        except (FileNotFoundError, json.JSONDecodeError):
            attempts = []
        if len(attempts) >= count:
            return attempts
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} attempts recorded within 30 s")


# --- the log checker, fuzzed ---------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_LOG_KEYS = ("address", "topics", "data", "blockNumber", "transactionHash", "removed")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_LOG_KEYS), _json) | _json)
def test_any_log_a_node_can_send_is_a_node_error_never_a_crash(entry) -> None:
    registry = evm.Registry(evm.connect("http://127.0.0.1:9"), "0x5FbDB2315678afecb367f032d93F642f64180aa3")
    with pytest.raises(NodeError) as info:
        registry._checked_log(entry, b"\x11" * 32, 7, 0)
    assert str(info.value).startswith("node http://127.0.0.1:9: eth_getLogs: log 0")


class _Crash(Exception):
    pass


def test_a_publisher_restarted_while_its_transaction_is_stuck_replaces_it_with_the_same_nonce(
    tmp_path, monkeypatch
) -> None:
    from loader.publish import evmtx

    node = Anvil(require_anvil()).start()
    try:
        key = key_file(tmp_path)
        contract = deploy(node, key)
        spool = spool_job(tmp_path / "job")
        digest_hex, _ = only_report(spool)
        rpc(node.url, "evm_setAutomine", [False])

        def crash() -> None:
            raise _Crash

        monkeypatch.setattr(evmtx, "_test_pause", crash)  # killed right after the first send
        with pytest.raises(_Crash):
            Delivery(Ledger(spool), [_sink(node.url, contract, key)]).run(30)
        monkeypatch.undo()
        [first] = record(spool, digest_hex, contract)["intent"]["attempts"]
        _wait_in_pool(node, first["tx_hash"])  # pending, nothing mines it: stuck

        sink = _sink(node.url, contract, key, replacement=Replacement(replace_after=0.5, max_replacements=2))
        outcomes: list = []
        restarted = threading.Thread(target=lambda: outcomes.extend(Delivery(Ledger(spool), [sink]).run(60)))
        restarted.start()
        attempts = _wait_for_attempts(spool, digest_hex, contract, 2)
        _wait_in_pool(node, attempts[1]["tx_hash"])
        rpc(node.url, "evm_mine")
        restarted.join(60)
        [outcome] = outcomes
        assert outcome.delivered, outcome.detail
        intent = record(spool, digest_hex, contract)["intent"]
        assert intent["attempts"][0]["tx_hash"] == first["tx_hash"] and len(intent["attempts"]) >= 2
        assert intent["attempts"][1]["maxFeePerGas"] > first["maxFeePerGas"]
        assert outcome.receipt["tx_hash"] == attempts[1]["tx_hash"]
        assert node.nonce() == 2  # the deployment and one publication: the same nonce was reused
    finally:
        node.stop()
