"""Client of the AMD Key Distribution Service (KDS) for the collateral of one SEV-SNP report.

  {root}/vcek/v1/{Milan|Genoa|Turin}/{hwid}?blSPL=B&teeSPL=T&snpSPL=S&ucodeSPL=U  (Turin: fmcSPL first)
  {root}/vcek/v1/{product}/cert_chain    ASK + ARK (PEM)        VLEK: {root}/vlek/v1/{product}/cert_chain
  {root}/vcek/v1/{product}/crl           the ARK's CRL (DER)    VLEK: {root}/vlek/v1/{product}/crl

The hwid is the report's CHIP_ID (hex; Turin uses its first 8 bytes), the SPLs its REPORTED_TCB.
A VLEK is provisioned to a cloud provider and cannot be fetched by chip: only its chain and CRL
come from here. The result is keyed as the SEV-SNP verifier reads collateral ("vcek", "chain",
"crl"), and the verifier checks everything: this client only asks for the right documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attestation.errors import AttestationError, CollateralError
from attestation.fetch import Fetcher
from attestation.sevsnp import report
from attestation.sevsnp.products import Product

AMD_KDS = "https://kdsintf.amd.com"
MAX_CERT_BYTES = 16 * 1024
MAX_CHAIN_BYTES = 64 * 1024
MAX_CRL_BYTES = 1 << 20
_SPL_PARAMS = {
    "fmc": "fmcSPL",
    "bootloader": "blSPL",
    "tee": "teeSPL",
    "snp": "snpSPL",
    "microcode": "ucodeSPL",
}


def vcek_query(rep: report.AttestationReport, product: Product) -> tuple[str, str]:
    """(hwid hex, query string) for the VCEK of this report's chip at its REPORTED_TCB."""
    tcb = rep.tcb("reported_tcb", product)
    if tcb.reserved_nonzero:
        raise CollateralError(
            f"REPORTED_TCB 0x{tcb.raw:016x} has non-zero reserved bytes: no VCEK to ask for"
        )
    chip = rep.chip_id[:8] if product is Product.TURIN else rep.chip_id
    if not any(chip):
        raise CollateralError("CHIP_ID is all zero (MASK_CHIP_ID): the VCEK cannot be asked for")
    query = "&".join(f"{_SPL_PARAMS[name]}={value}" for name, value in tcb.parts().items())
    return chip.hex(), query


@dataclass(frozen=True)
class KdsClient:
    root: str = AMD_KDS
    fetcher: Fetcher = field(default_factory=Fetcher)

    def _url(self, path: str) -> str:
        return self.root.rstrip("/") + path

    def collateral(self, raw_report: bytes, product: Product, *, crl: bool = True) -> dict[str, bytes]:
        """The signing certificate (VCEK only), the ASK/ASVK chain and the ARK's CRL."""
        try:
            rep = report.parse(raw_report)
        except AttestationError as exc:
            raise CollateralError(f"cannot tell which VCEK the report needs: {exc}") from exc
        kind = rep.signing_key_name
        if kind not in ("vcek", "vlek"):
            raise CollateralError(f"SIGNING_KEY is {kind}: no certificate to fetch")
        slug, name = product.slug, product.value
        out: dict[str, bytes] = {}
        if kind == "vcek":
            hwid, query = vcek_query(rep, product)
            out["vcek"] = self.fetcher.get(
                f"sev-snp/vcek/{slug}/{hwid}/{query.replace('&', '_')}",
                self._url(f"/vcek/v1/{name}/{hwid}?{query}"),
                limit=MAX_CERT_BYTES,
            ).body
        out["chain"] = self.fetcher.get(
            f"sev-snp/{kind}-chain/{slug}", self._url(f"/{kind}/v1/{name}/cert_chain"), limit=MAX_CHAIN_BYTES
        ).body
        if crl:
            out["crl"] = self.fetcher.get(
                f"sev-snp/{kind}-crl/{slug}", self._url(f"/{kind}/v1/{name}/crl"), limit=MAX_CRL_BYTES
            ).body
        return out
