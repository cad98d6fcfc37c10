"""SEV-SNP product lines (Milan, Genoa, Turin) and the ways to tell which one produced a report.

A product selects the ARK to trust and the TCB_VERSION layout. Sources: the VCEK's productName
extension ("Milan-B0", "Turin"), the VCEK/VLEK issuer name ("SEV-Milan", "SEV-VLEK-Genoa"),
the report's CPUID_FAM_ID/CPUID_MOD_ID (report version 3 and later) or an explicit flag.
"""

from __future__ import annotations

import enum

from attestation.errors import EvidenceFormatError


class Product(enum.Enum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def slug(self) -> str:
        return self.value.lower()


# (family, inclusive model ranges) from AMD's processor programming references:
# Milan is family 19h models 00h-0Fh; Genoa (and Bergamo/Siena, which share its SNP firmware)
# family 19h models 10h-1Fh and A0h-AFh; Turin family 1Ah models 00h-1Fh.
_CPUID_MODELS: dict[Product, tuple[int, tuple[tuple[int, int], ...]]] = {
    Product.MILAN: (0x19, ((0x00, 0x0F),)),
    Product.GENOA: (0x19, ((0x10, 0x1F), (0xA0, 0xAF))),
    Product.TURIN: (0x1A, ((0x00, 0x1F),)),
}


def parse(text: str) -> Product:
    """A product from a flag or configuration value, case-insensitive."""
    for product in Product:
        if text.strip().lower() == product.slug:
            return product
    names = ", ".join(p.slug for p in Product)
    raise EvidenceFormatError(f"product: expected one of {names}, found {text!r}")


def from_cpuid(family: int, model: int) -> Product | None:
    """The product of a report's CPUID_FAM_ID and CPUID_MOD_ID, or None if unknown."""
    for product, (fam, ranges) in _CPUID_MODELS.items():
        if family == fam and any(lo <= model <= hi for lo, hi in ranges):
            return product
    return None


def from_product_name(name: str) -> tuple[Product | None, str | None]:
    """Product and stepping from a VCEK productName such as "Milan-B0" or "Turin"."""
    line, _, stepping = name.partition("-")
    for product in Product:
        if line == product.value:
            return product, stepping or None
    return None, None


def from_issuer_cn(common_name: str) -> Product | None:
    """Product of an ASK/ASVK name ("SEV-Milan", "SEV-VLEK-Milan") or an ARK name ("ARK-Milan")."""
    for prefix in ("SEV-VLEK-", "SEV-", "ARK-"):
        if common_name.startswith(prefix):
            rest = common_name[len(prefix) :]
            return next((p for p in Product if p.value == rest), None)
    return None
