"""Client of the Intel PCS v4 API, or of a PCCS, for the collateral of one TDX quote.

The service root is given as dcap-qvl and Intel's quote provider library take it (Intel:
https://api.trustedservices.intel.com; a PCCS: https://pccs.example:8081). Documents:

  {root}/tdx/certification/v4/tcb?fmspc=F       TCB Info; chain in TCB-Info-Issuer-Chain
                                                 (older servers: SGX-TCB-Info-Issuer-Chain)
  {root}/tdx/certification/v4/qe/identity       QE Identity; SGX-Enclave-Identity-Issuer-Chain
  {root}/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der
                                                 PCK CRL; SGX-PCK-CRL-Issuer-Chain
  {root}/sgx/certification/v4/rootcacrl         Root CA CRL (a PCCS serves it as hex)

Issuer chains arrive URL-encoded in the headers; CRL bodies as DER, PEM or hex. The result is
keyed by the file names the TDX verifier reads (collateral.REQUIRED/OPTIONAL), so fetched,
cached, offline and hand-made collateral are judged by the same code. What the server says
is not trusted: the verifier checks every signature, chain and date; this client refuses only
what is plainly not for this quote (another FMSPC's TCB Info) or not a document at all.
"""

from __future__ import annotations

import binascii
import urllib.parse
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization

from attestation.errors import AttestationError, CollateralError
from attestation.fetch import Document, Fetcher, FetchError
from attestation.tdx import collateral as coll
from attestation.tdx import pck, quote
from certs.chain import load_certificates, load_crl
from certs.errors import CertsError

INTEL_PCS = "https://api.trustedservices.intel.com"
MAX_CRL_BYTES = 4 << 20
MAX_CHAIN_BYTES = 32 * 1024
PLATFORM_CA_CN = "Intel SGX PCK Platform CA"
PROCESSOR_CA_CN = "Intel SGX PCK Processor CA"


@dataclass(frozen=True)
class QuoteTarget:
    """What the collateral must be for: the PCK's FMSPC and the CA that issued it."""

    fmspc: bytes
    ca: str  # "platform" or "processor"


def target_of(raw_quote: bytes) -> QuoteTarget:
    """FMSPC and PCK CA of a quote, read from its embedded PCK chain (not yet trusted)."""
    try:
        q = quote.parse(raw_quote)
        pem = q.pck_chain_pem.rstrip(b"\x00")
        certs = load_certificates(pem, what="PCK certificate chain")
        ext = pck.parse_extensions(certs[0])
    except (AttestationError, CertsError) as exc:
        raise CollateralError(f"cannot tell which collateral the quote needs: {exc}") from exc
    issuer = certs[0].issuer.rfc4514_string()
    ca = "processor" if "Processor" in issuer else "platform"
    return QuoteTarget(ext.fmspc, ca)


def _chain(doc: Document, *names: str) -> bytes:
    value = doc.header(*names)
    if value is None:
        raise FetchError(f"{doc.url}: no {names[0]} header")
    pem = urllib.parse.unquote(value).encode("ascii", "replace")
    if len(pem) > MAX_CHAIN_BYTES:
        raise FetchError(f"{doc.url}: {names[0]} larger than {MAX_CHAIN_BYTES} bytes")
    try:
        load_certificates(pem, what=f"{names[0]} header")
    except CertsError as exc:
        raise FetchError(f"{doc.url}: {names[0]}: {exc}") from exc
    return pem


def crl_der(body: bytes, what: str) -> bytes:
    """A CRL body as DER, whichever of DER, PEM or hex the server sent."""
    data = body.strip()
    if data and all(c in b"0123456789abcdefABCDEF" for c in data):
        try:
            data = binascii.unhexlify(data)
        except binascii.Error as exc:
            raise FetchError(f"{what}: odd-length hex CRL") from exc
    try:
        return load_crl(bytes(data), what=what).public_bytes(serialization.Encoding.DER)
    except CertsError as exc:
        raise FetchError(f"{what}: {exc}") from exc


@dataclass(frozen=True)
class PcsClient:
    root: str = INTEL_PCS
    fetcher: Fetcher = field(default_factory=Fetcher)

    def _url(self, path: str) -> str:
        return self.root.rstrip("/") + path

    def collateral(self, target: QuoteTarget, *, crls: bool = True) -> dict[str, bytes]:
        """TCB Info, QE Identity (and the PCK and Root CA CRLs) for `target`, by file name."""
        fmspc = target.fmspc.hex()
        tcb = self.fetcher.get(
            f"tdx/tcb-info/{fmspc}",
            self._url(f"/tdx/certification/v4/tcb?fmspc={fmspc}"),
            limit=coll.MAX_COLLATERAL_BYTES,
        )
        info = coll.parse_tcb_info(tcb.body, f"TCB Info from {tcb.url}")
        if info.fmspc != target.fmspc:
            raise CollateralError(
                f"TCB Info from {tcb.url}: for FMSPC {info.fmspc.hex()}, the quote's PCK has {fmspc}"
            )
        qe = self.fetcher.get(
            "tdx/qe-identity",
            self._url("/tdx/certification/v4/qe/identity"),
            limit=coll.MAX_COLLATERAL_BYTES,
        )
        coll.parse_qe_identity(qe.body, f"QE Identity from {qe.url}")
        out = {
            coll.TCB_INFO: tcb.body,
            coll.TCB_INFO_CHAIN: _chain(tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
            coll.QE_IDENTITY: qe.body,
            coll.QE_IDENTITY_CHAIN: _chain(qe, "SGX-Enclave-Identity-Issuer-Chain"),
        }
        if crls:
            out.update(self._crls(target.ca))
        return out

    def _crls(self, ca: str) -> dict[str, bytes]:
        pck_crl = self.fetcher.get(
            f"tdx/pck-crl/{ca}",
            self._url(f"/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
            limit=MAX_CRL_BYTES,
        )
        root_crl = self.fetcher.get(
            "tdx/root-ca-crl", self._url("/sgx/certification/v4/rootcacrl"), limit=MAX_CRL_BYTES
        )
        return {
            coll.PCK_CRL: crl_der(pck_crl.body, f"PCK CRL from {pck_crl.url}"),
            coll.PCK_CRL_CHAIN: _chain(pck_crl, "SGX-PCK-CRL-Issuer-Chain"),
            coll.ROOT_CA_CRL: crl_der(root_crl.body, f"Root CA CRL from {root_crl.url}"),
        }
