"""A real HTTP server on loopback that answers as Intel PCS/PCCS, AMD KDS and the NVIDIA RIM
service do, serving the real collateral files of the vectors (and what a test adds)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.tdx_helpers import tdx
from tests.vectors import vectors_dir


@dataclass
class Route:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    trickle: float = 0.0  # seconds between bytes of the body (a slow-loris server)


@dataclass
class Served:
    routes: dict[str, Route] = field(default_factory=dict)
    failures: int = 0  # answer this many requests with 503 first (an outage that passes)
    requests: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        served = self.served
        served.requests.append(self.path)
        if served.failures > 0:
            served.failures -= 1
            self._answer(Route(b"busy", status=503))
            return
        self._answer(served.routes.get(self.path, Route(b"not found", status=404)))

    def _answer(self, route: Route) -> None:
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if "Content-Length" not in route.headers:
            self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        if not route.trickle:
            self.wfile.write(route.body)
            return
        for i in range(len(route.body)):
            self.wfile.write(route.body[i : i + 1])
            self.wfile.flush()
            time.sleep(route.trickle)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def serving(served: Served) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def unreachable_url() -> str:
    """A loopback port nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _chain_header(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode())


def pcs_routes(
    fmspc: str,
    *,
    tcb_info: bytes,
    tcb_chain: bytes,
    qe_identity: bytes,
    qe_chain: bytes,
    old_header: bool = False,
) -> dict[str, Route]:
    """PCS v4 routes as a PCCS serves them: chains URL-encoded in headers, the root CRL as hex."""
    tcb_header = "SGX-TCB-Info-Issuer-Chain" if old_header else "TCB-Info-Issuer-Chain"
    crl_chain = tdx("go-tdx-guest", "pckcrl_issuer_chain.pem")
    return {
        f"/tdx/certification/v4/tcb?fmspc={fmspc}": Route(
            tcb_info, {tcb_header: _chain_header(tcb_chain), "Content-Type": "application/json"}
        ),
        "/tdx/certification/v4/qe/identity": Route(
            qe_identity, {"SGX-Enclave-Identity-Issuer-Chain": _chain_header(qe_chain)}
        ),
        "/sgx/certification/v4/pckcrl?ca=platform&encoding=der": Route(
            tdx("go-tdx-guest", "pckcrl"), {"SGX-PCK-CRL-Issuer-Chain": _chain_header(crl_chain)}
        ),
        "/sgx/certification/v4/rootcacrl": Route(tdx("go-tdx-guest", "rootcrl.der").hex().encode()),
    }


def go_pcs(fmspc: str = "50806f000000", **kwargs: bool) -> dict[str, Route]:
    """go-tdx-guest's 2023 PCS responses (TCB Info for FMSPC 50806f000000), served for `fmspc`."""
    return pcs_routes(
        fmspc,
        tcb_info=tdx("go-tdx-guest", "sample_tcbInfo_response"),
        tcb_chain=tdx("go-tdx-guest", "tcbinfo_issuer_chain.pem"),
        qe_identity=tdx("go-tdx-guest", "sample_qeIdentity_response"),
        qe_chain=tdx("go-tdx-guest", "qeidentity_issuer_chain.pem"),
        **kwargs,
    )


def trustee_pcs() -> dict[str, Route]:
    """trustee's 2025 TCB Info (FMSPC 00a06d080000) and QE Identity, with the renewed chain."""
    chain = tdx("intel", "tcb_signing_chain_renewed.pem")
    return pcs_routes(
        "00a06d080000",
        tcb_info=tdx("trustee", "tcbInfo.json"),
        tcb_chain=chain,
        qe_identity=tdx("trustee", "enclaveIdentity.json"),
        qe_chain=chain,
    )


def kds_vcek_route(product: str, hwid: bytes, spls: dict[str, int], vcek: bytes) -> dict[str, Route]:
    query = "&".join(f"{k}={v}" for k, v in spls.items())
    return {
        f"/vcek/v1/{product}/{hwid.hex()}?{query}": Route(vcek, {"Content-Type": "application/pkix-cert"})
    }


def kds_chain_route(product: str, kind: str = "vcek") -> dict[str, Route]:
    files = {"Milan": "ask_ark_milan.pem", "Genoa": "ask_ark_genoa.pem", "Turin": "ask_ark_turin_vcek.pem"}
    pem = (vectors_dir() / "snp" / "go-sev-guest" / files[product]).read_bytes()
    return {f"/{kind}/v1/{product}/cert_chain": Route(pem, {"Content-Type": "application/x-pem-file"})}


def rim_route(rim_id: str, swidtag: bytes) -> dict[str, Route]:
    """The NVIDIA RIM service's answer: JSON with the base64 SWID tag and its SHA-256."""
    body = json.dumps(
        {
            "id": rim_id,
            "rim": base64.b64encode(swidtag).decode(),
            "sha256": hashlib.sha256(swidtag).hexdigest(),
            "rim_format": "SWIDTAG",
            "request_id": "test",
        }
    ).encode()
    return {f"/v1/rim/{rim_id}": Route(body, {"Content-Type": "application/json"})}
