"""Publishing against a real JSON-RPC node: anvil on 127.0.0.1, driven through the CLI.

Skipped (with the reason) when anvil is not installed: run .ci/install-node-tools.sh or set TL_ANVIL.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("web3", reason="the chain tests need the chain extra (web3)")

from loader.publish.evm import TEST_PAUSE_ENV
from tests.chain_helpers import ANVIL_ADDRESS, REPO, Anvil, cli, demo_job, key_file, require_anvil, rpc

EXIT_NOT_PUBLISHED = 6


@pytest.fixture
def anvil():
    node = Anvil(require_anvil()).start()
    yield node
    node.stop()


def deploy_cli(node: Anvil, key: Path) -> str:
    done = cli("chain", "deploy", "--rpc-url", node.url, "--account-key-file", str(key))
    assert done.returncode == 0, done.stderr
    address = done.stdout.strip()
    assert address.startswith("0x") and len(address) == 42
    return address


def deploy(node: Anvil, key: Path) -> str:
    """In-process deployment (the CLI one is tested once; each CLI start costs a web3 import)."""
    from loader.publish import evm
    from loader.publish.keyfile import read_account_key

    address, _ = evm.deploy(evm.connect(node.url), read_account_key(key), deadline=time.monotonic() + 30)
    return address


def spool_job(workdir: Path) -> Path:
    """Run the demo job in-process without publishing; return its spool directory."""
    from loader.boot.config import load_config
    from loader.boot.sequence import boot

    assert boot(load_config(demo_job(workdir))).exit_code == 0
    return workdir / "spool"


def chain_args(node: Anvil, contract: str, key: Path) -> list[str]:
    return ["--rpc-url", node.url, "--contract", contract, "--account-key-file", str(key)]


def record(spool: Path, digest_hex: str, contract: str) -> dict:
    path = spool / f"{digest_hex}.evm-31337-{contract.lower()[2:]}.json"
    return json.loads(path.read_text())


def only_report(spool: Path) -> tuple[str, bytes]:
    [path] = spool.glob("*.cbor")
    return path.stem, path.read_bytes()


def test_deploy_prints_the_address_of_a_report_registry(anvil: Anvil, tmp_path: Path) -> None:
    from loader.publish.evm import artifact

    address = deploy_cli(anvil, key_file(tmp_path))
    assert rpc(anvil.url, "eth_getCode", [address, "latest"]) == artifact()["deployedBytecode"]


def test_node_down_during_run_then_publish_delivers_and_fetch_is_byte_identical(tmp_path: Path) -> None:
    node = Anvil(require_anvil())
    key = key_file(tmp_path)
    contract = deploy(node.start(), key)  # a fresh anvil deploys the same address again below
    node.stop()
    config = demo_job(tmp_path / "job")
    spool = tmp_path / "job" / "spool"

    started = time.monotonic()
    down = cli(
        "run", "--config", str(config), *chain_args(node, contract, key), "--chain-id", "31337",
        "--publish-timeout", "3",
    )  # fmt: skip
    assert down.returncode == EXIT_NOT_PUBLISHED, down.stderr
    assert time.monotonic() - started < 30
    assert "NOT PUBLISHED" in down.stderr and "node unreachable" in down.stderr
    digest_hex, report = only_report(spool)
    pending = record(spool, digest_hex, contract)
    assert pending["state"] == "pending" and pending["attempts"] >= 1 and pending["intent"] is None

    try:
        assert deploy(node.start(), key) == contract
        first = cli("publish", "--spool", str(spool), *chain_args(node, contract, key))
        assert first.returncode == 0, first.stderr
        delivered = record(spool, digest_hex, contract)
        assert delivered["state"] == "delivered" and delivered["receipt"]["chain_id"] == 31337
        assert len(node.logs(contract, digest_hex)) == 1
        nonce = node.nonce()

        again = cli("publish", "--spool", str(spool), *chain_args(node, contract, key), "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["reports"][0]["delivered"] is True
        assert node.nonce() == nonce and len(node.logs(contract, digest_hex)) == 1

        out = tmp_path / "fetched.cbor"
        fetch = cli(
            "report", "fetch", "--rpc-url", node.url, "--contract", contract,
            "--digest", f"sha256:{digest_hex}", "-o", str(out),
        )  # fmt: skip
        assert fetch.returncode == 0, fetch.stderr
        assert out.read_bytes() == report
        assert cli("digest", str(out)).stdout.strip() == f"sha256:{digest_hex}"
    finally:
        node.stop()


def test_run_with_the_node_up_publishes_before_exiting(anvil: Anvil, tmp_path: Path) -> None:
    key = key_file(tmp_path)
    contract = deploy(anvil, key)
    config = demo_job(tmp_path / "job")
    done = cli("run", "--config", str(config), *chain_args(anvil, contract, key))
    assert done.returncode == 0, done.stderr
    digest_hex, _ = only_report(tmp_path / "job" / "spool")
    assert record(tmp_path / "job" / "spool", digest_hex, contract)["state"] == "delivered"
    [log] = anvil.logs(contract, digest_hex)
    assert log["topics"][3] == "0x" + "00" * 12 + ANVIL_ADDRESS.lower()[2:]


def test_killed_publisher_neither_loses_nor_duplicates(anvil: Anvil, tmp_path: Path) -> None:
    """kill -9 after the transaction is sent, before the delivery record is written; restart."""
    key = key_file(tmp_path)
    contract = deploy(anvil, key)
    spool = spool_job(tmp_path / "job")
    digest_hex, report = only_report(spool)
    nonce_before = anvil.nonce()

    publisher = subprocess.Popen(
        [sys.executable, "-m", "loader", "publish", "--spool", str(spool), *chain_args(anvil, contract, key)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), TEST_PAUSE_ENV: "60"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not anvil.logs(contract, digest_hex):
            assert publisher.poll() is None, "the publisher exited before sending"
            time.sleep(0.05)
        assert anvil.logs(contract, digest_hex), "the transaction never reached the chain"
    finally:
        publisher.kill()
        publisher.wait(10)
    assert publisher.returncode == -9
    killed = record(spool, digest_hex, contract)
    assert killed["state"] == "pending" and killed["intent"]["tx_hash"].startswith("0x")
    assert anvil.nonce() == nonce_before + 1

    restarted = cli("publish", "--spool", str(spool), *chain_args(anvil, contract, key))
    assert restarted.returncode == 0, restarted.stderr
    delivered = record(spool, digest_hex, contract)
    assert delivered["state"] == "delivered"
    assert delivered["receipt"]["tx_hash"] == killed["intent"]["tx_hash"]
    assert len(anvil.logs(contract, digest_hex)) == 1
    assert anvil.nonce() == nonce_before + 1
    assert hashlib.sha256(report).hexdigest() == digest_hex


def test_killed_while_the_transaction_is_pending_resumes_it(anvil: Anvil, tmp_path: Path) -> None:
    """No automine: the publisher is killed waiting for its receipt; the restart waits for the
    same transaction (it does not send a second one) and records it once it is mined."""
    key = key_file(tmp_path)
    contract = deploy(anvil, key)
    spool = spool_job(tmp_path / "job")
    digest_hex, _ = only_report(spool)
    rpc(anvil.url, "evm_setAutomine", [False])
    nonce_before = anvil.nonce()
    args = [
        sys.executable,
        "-m",
        "loader",
        "publish",
        "--spool",
        str(spool),
        *chain_args(anvil, contract, key),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not rpc(anvil.url, "txpool_content")["pending"]:
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(10)
    intent = record(spool, digest_hex, contract)["intent"]
    second = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(2.0)  # let it find the pending transaction and wait for it
    rpc(anvil.url, "evm_mine")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert record(spool, digest_hex, contract)["receipt"]["tx_hash"] == intent["tx_hash"]
    assert anvil.nonce() == nonce_before + 1
    assert len(anvil.logs(contract, digest_hex)) == 1


def test_fetch_of_an_unpublished_digest_is_rejected(anvil: Anvil, tmp_path: Path) -> None:
    contract = deploy(anvil, key_file(tmp_path))
    out = tmp_path / "x.cbor"
    done = cli(
        "report", "fetch", "--rpc-url", anvil.url, "--contract", contract,
        "--digest", "sha256:" + "ab" * 32, "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 1 and "never published" in done.stderr
    assert not out.exists()


def test_publish_refuses_a_contract_that_is_not_a_registry_and_a_wrong_chain(
    anvil: Anvil, tmp_path: Path
) -> None:
    key = key_file(tmp_path)
    contract = deploy(anvil, key)
    spool = spool_job(tmp_path / "job")
    not_registry = cli("publish", "--spool", str(spool), *chain_args(anvil, ANVIL_ADDRESS, key))
    assert not_registry.returncode == EXIT_NOT_PUBLISHED and "no contract at" in not_registry.stderr
    wrong_chain = cli(
        "publish", "--spool", str(spool), *chain_args(anvil, contract, key), "--chain-id", "204"
    )
    assert wrong_chain.returncode == EXIT_NOT_PUBLISHED
    assert "expected chain id 204, the node is on 31337" in wrong_chain.stderr
    assert anvil.nonce() == 1  # only the deployment


def test_key_never_appears_in_any_output(anvil: Anvil, tmp_path: Path) -> None:
    from tests.chain_helpers import ANVIL_KEY

    key = key_file(tmp_path)
    contract = deploy(anvil, key)
    done = cli("run", "--config", str(demo_job(tmp_path / "job")), *chain_args(anvil, contract, key))
    assert done.returncode == 0
    spool = tmp_path / "job" / "spool"
    texts = [done.stdout, done.stderr, *(p.read_text() for p in spool.glob("*.json"))]
    assert not any(ANVIL_KEY[2:] in t.lower() for t in texts)
