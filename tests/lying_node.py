"""A JSON-RPC node that lies: a real HTTP server on loopback in front of anvil.

It forwards every request to the honest node (anvil) and, depending on `mode`, rewrites the
answer before the client sees it:

    honest          forwards untouched
    claim           `lookup` says every digest is published in block 1, and eth_getLogs returns
                    a well-formed ReportPublished log whose bytes are another report's
    log-address     eth_getLogs answers with each log's `address` turned into a list
    log-fields      eth_getLogs answers with topics as a number and data as an object
    chain-id        eth_chainId answers a list
    block-number    eth_blockNumber answers a negative number
    not-json        every answer is a truncated JSON text
    drop            every answer announces its full length, sends half, and closes the connection

Synthetic: these answers are made up by the test, not recorded from any real node.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.request
from typing import Any

MODES = (
    "honest",
    "claim",
    "log-address",
    "log-fields",
    "chain-id",
    "block-number",
    "not-json",
    "drop",
)


def _lookup_selector() -> str:
    from eth_utils import keccak

    return "0x" + keccak(text="lookup(bytes32)")[:4].hex()


def _encode_bytes(data: bytes) -> str:
    padded = data + b"\0" * (-len(data) % 32)
    return "0x" + (32).to_bytes(32, "big").hex() + len(data).to_bytes(32, "big").hex() + padded.hex()


class LyingNode:
    """with LyingNode(upstream_url) as node: node.url ...; node.mode = "claim"."""

    def __init__(self, upstream: str, mode: str = "honest") -> None:
        self.upstream = upstream
        self.mode = mode
        self.requests: list[str] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LyingNode:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, body: bytes) -> bytes:
        request = urllib.request.Request(self.upstream, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def answer(self, body: bytes) -> bytes:
        call = json.loads(body)
        method = call.get("method", "?")
        self.requests.append(method)
        reply = json.loads(self._forward(body))
        rewritten = self._rewrite(method, call.get("params") or [], reply)
        return json.dumps(rewritten).encode()

    def _rewrite(self, method: str, params: list[Any], reply: dict[str, Any]) -> dict[str, Any]:
        mode = self.mode
        if (
            mode == "claim"
            and method == "eth_call"
            and str(params[0].get("data", "")).startswith(_lookup_selector())
        ):
            publisher = "00" * 12 + "f39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            reply["result"] = "0x" + (1).to_bytes(32, "big").hex() + publisher + "ab" * 32
        elif mode == "claim" and method == "eth_getLogs":
            query = params[0]
            other = b"not the report that was asked for"
            contract = query["address"][0] if isinstance(query["address"], list) else query["address"]
            reply["result"] = [
                {
                    "address": contract,
                    "topics": [
                        *query["topics"],
                        "0x" + "ab" * 32,
                        "0x" + "00" * 12 + "f39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                    ],
                    "data": _encode_bytes(other),
                    "blockNumber": "0x1",
                    "blockHash": "0x" + hashlib.sha256(b"block").hexdigest(),
                    "transactionHash": "0x" + hashlib.sha256(b"tx").hexdigest(),
                    "transactionIndex": "0x0",
                    "logIndex": "0x0",
                    "removed": False,
                }
            ]
        elif mode == "log-address" and method == "eth_getLogs":
            for entry in reply.get("result") or []:
                entry["address"] = [entry["address"], entry["address"]]
        elif mode == "log-fields" and method == "eth_getLogs":
            for entry in reply.get("result") or []:
                entry["topics"] = 7
                entry["data"] = {"report": "yes"}
        elif mode == "chain-id" and method == "eth_chainId":
            reply["result"] = ["0x7a69"]
        elif mode == "block-number" and method == "eth_blockNumber":
            reply["result"] = "-0x5"
        return reply

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        node = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = node.answer(body)
                if node.mode == "not-json":
                    payload = payload[: len(payload) // 2]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if node.mode == "drop":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(payload)

        return Handler
