"""Helpers for the chain tests: a local anvil node on loopback, demo reports, a key file.

anvil is found through $TL_ANVIL, else <repo>/.node-tools (where .ci/install-node-tools.sh
installs it), else PATH; the anvil tests are skipped with that reason when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANVIL_RELATIVE = Path(".node-tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
# anvil's first development account: a published test key, funded only on anvil's dev chain.
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def find_anvil() -> Path | None:
    candidates = [os.environ.get("TL_ANVIL"), str(REPO / ANVIL_RELATIVE), shutil.which("anvil")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def require_anvil() -> Path:
    path = find_anvil()
    if path is None:
        pytest.skip(
            f"anvil not found: set TL_ANVIL or run .ci/install-node-tools.sh (looked in {ANVIL_RELATIVE})"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rpc(url: str, method: str, params: list | None = None) -> object:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


class Anvil:
    """One anvil process on 127.0.0.1:<port>; start() again after stop() gives a fresh chain."""

    def __init__(self, binary: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.binary, self.port, self.extra = binary, port or free_port(), extra
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Anvil:
        args = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), "--quiet", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anvil exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                rpc(self.url, "eth_chainId")
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("anvil did not answer within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def logs(self, contract: str, digest_hex: str) -> list[dict]:
        from loader.publish.evm import artifact

        topic = _event_topic(artifact()["abi"])
        query = {
            "address": contract,
            "fromBlock": "0x0",
            "toBlock": "latest",
            "topics": [topic, "0x" + digest_hex],
        }
        return rpc(self.url, "eth_getLogs", [query])  # type: ignore[return-value]

    def nonce(self, address: str = ANVIL_ADDRESS) -> int:
        return int(rpc(self.url, "eth_getTransactionCount", [address, "latest"]), 16)  # type: ignore[arg-type]


def _event_topic(abi: list[dict]) -> str:
    from eth_utils import event_abi_to_log_topic

    event = next(e for e in abi if e.get("type") == "event" and e["name"] == "ReportPublished")
    return "0x" + event_abi_to_log_topic(event).hex()


def key_file(directory: Path, key: str = ANVIL_KEY) -> Path:
    path = directory / "operator.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def demo_job(workdir: Path) -> Path:
    """A demo work directory (inputs, approved list, loader.toml); returns the config path."""
    from loader.cli import demo

    return demo.build(workdir)


def make_report(workdir: Path) -> bytes:
    """Run the demo job once (mock TEE) and return its signed report."""
    from loader.boot.config import load_config
    from loader.boot.sequence import boot

    return boot(load_config(demo_job(workdir))).report


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
