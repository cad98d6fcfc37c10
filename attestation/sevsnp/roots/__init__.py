"""AMD's public SEV-SNP certificate chains, bundled as package data.

Each `<product>_<vcek|vlek>.pem` holds the ASK (or ASVK) then the ARK, as AMD's KDS serves
them (copied from google/go-sev-guest verify/trust/, identical to virtee/sev's copies). The ARKs
are trust anchors: their SHA-256 fingerprints are pinned here and checked on every load, so a
modified data file fails loudly instead of moving the root of trust.
"""

from __future__ import annotations

import functools
from importlib import resources

from cryptography import x509

from attestation.errors import VerificationError
from attestation.sevsnp.products import Product
from certs.chain import fingerprint, load_certificates

ARK_SHA256 = {
    Product.MILAN: "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    Product.GENOA: "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    Product.TURIN: "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


@functools.cache
def bundled_chain(product: Product, kind: str) -> tuple[x509.Certificate, x509.Certificate]:
    """(ASK or ASVK, ARK) for `product`; `kind` is "vcek" or "vlek"."""
    name = f"{product.slug}_{kind}.pem"
    data = resources.files(__name__).joinpath(name).read_bytes()
    certs = load_certificates(data, what=f"bundled {name}")
    if len(certs) != 2:
        raise VerificationError(f"bundled {name}: expected 2 certificates, found {len(certs)}")
    ask, ark = certs
    if fingerprint(ark) != ARK_SHA256[product]:
        raise VerificationError(f"bundled {name}: ARK fingerprint {fingerprint(ark)} is not the pinned one")
    return ask, ark


def bundled_ark(product: Product) -> x509.Certificate:
    return bundled_chain(product, "vcek")[1]
