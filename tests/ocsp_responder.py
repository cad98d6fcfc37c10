"""A real OCSP responder on loopback for the tests, signing with a SYNTHETIC TEST CA.

Everything here is made up for the tests (named "TEST" in every subject); the behaviour knobs
(`Responder.mode`) let a test make the responder lie: a stale response, a wrong signer, a
delegate without id-kp-OCSPSigning, a missing or replayed nonce, garbage bytes.
"""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(signing_key, hashes.SHA384())


@dataclass
class Pki:
    """TEST CA, a leaf it issued, a delegated responder (with and without OCSP signing), a stranger."""

    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )

    def __post_init__(self) -> None:
        self.ca = make_cert("trusted-loader TEST OCSP CA (synthetic)", self.ca_key, ca=True)
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf = make_cert("TEST GPU leaf (synthetic)", self.leaf_key, issuer=(self.ca, self.ca_key))
        self.delegate_key = ec.generate_private_key(ec.SECP384R1())
        self.delegate = make_cert(
            "TEST OCSP responder (synthetic)",
            self.delegate_key,
            issuer=(self.ca, self.ca_key),
            eku=[ExtendedKeyUsageOID.OCSP_SIGNING],
        )
        self.plain_key = ec.generate_private_key(ec.SECP384R1())
        self.plain = make_cert(
            "TEST non-OCSP delegate (synthetic)",
            self.plain_key,
            issuer=(self.ca, self.ca_key),
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        self.stranger_key = ec.generate_private_key(ec.SECP384R1())
        self.stranger = make_cert("TEST stranger CA (synthetic)", self.stranger_key, ca=True)


@dataclass
class Responder:
    pki: Pki
    status: str = "good"  # good, revoked, unknown
    mode: str = "normal"  # normal, stale, stranger, delegate, plain-delegate, no-nonce, fixed-nonce, garbage
    requests: int = 0

    def answer(self, body: bytes) -> bytes:
        self.requests += 1
        if self.mode == "garbage":
            return b"\x30\x03\x0a\x01\x00"  # truncated junk, not an OCSPResponse
        request = ocsp.load_der_ocsp_request(body)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        this, nxt = now - dt.timedelta(minutes=1), now + dt.timedelta(hours=12)
        if self.mode == "stale":
            this, nxt = now - dt.timedelta(days=3), now - dt.timedelta(days=2)
        cert = self.pki.leaf if request.serial_number == self.pki.leaf.serial_number else self.pki.ca
        status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[self.status]
        revoked = self.status == "revoked"
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert,
            issuer=self.pki.ca,
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=this,
            next_update=nxt,
            revocation_time=now - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        signer, key = {
            "stranger": (self.pki.stranger, self.pki.stranger_key),
            "delegate": (self.pki.delegate, self.pki.delegate_key),
            "plain-delegate": (self.pki.plain, self.pki.plain_key),
        }.get(self.mode, (self.pki.ca, self.pki.ca_key))
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
        if signer is not self.pki.ca:
            builder = builder.certificates([signer])
        if self.mode != "no-nonce":
            nonce = request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            if self.mode == "fixed-nonce":
                nonce = b"\x01" * 32  # a recorded answer replayed for a later request
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        from cryptography.hazmat.primitives.serialization import Encoding

        return builder.sign(key, hashes.SHA384()).public_bytes(Encoding.DER)


class OcspServer:
    """with OcspServer(responder) as url: ... (ThreadingHTTPServer on 127.0.0.1, free port)."""

    def __init__(self, responder: Responder) -> None:
        outer = responder

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = outer.answer(self.rfile.read(length))
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
