"""TCB_VERSION: the 64-bit security patch levels (SPLs) of the SNP firmware components.

The layout depends on the product (SEV-SNP ABI spec, "TCB_VERSION Structure"):
  Milan, Genoa: byte 0 BOOT_LOADER, 1 TEE, 2-5 reserved, 6 SNP, 7 MICROCODE;
  Turin:        byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 4-6 reserved, 7 MICROCODE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation.sevsnp.products import Product

COMPONENTS = ("fmc", "bootloader", "tee", "snp", "microcode")

_LAYOUT: dict[bool, dict[str, int]] = {
    False: {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    True: {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
}
_RESERVED: dict[bool, tuple[int, ...]] = {False: (2, 3, 4, 5), True: (4, 5, 6)}


@dataclass(frozen=True)
class TcbVersion:
    raw: int
    product: Product
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None
    reserved_nonzero: bool

    @classmethod
    def decode(cls, raw: int, product: Product) -> TcbVersion:
        turin = product is Product.TURIN
        octets = raw.to_bytes(8, "little")
        parts = {name: octets[i] for name, i in _LAYOUT[turin].items()}
        return cls(
            raw=raw,
            product=product,
            bootloader=parts["bootloader"],
            tee=parts["tee"],
            snp=parts["snp"],
            microcode=parts["microcode"],
            fmc=parts.get("fmc"),
            reserved_nonzero=any(octets[i] for i in _RESERVED[turin]),
        )

    def parts(self) -> dict[str, int]:
        """Component name to SPL, only the components this product has."""
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out = {"fmc": self.fmc, **out}
        return out

    def below(self, minimum: Mapping[str, int]) -> list[str]:
        """The components of `minimum` this TCB does not reach, as "name SPL < min"."""
        have = self.parts()
        return [
            f"{name} {have.get(name)} < {want}"
            if name in have
            else f"{name}: not part of {self.product.value}"
            for name, want in minimum.items()
            if name not in have or have[name] < want
        ]

    def to_json(self) -> dict[str, Any]:
        return {"raw": f"{self.raw:016x}", **self.parts()}

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.parts().items())
