"""Client of the NVIDIA RIM service: the driver and VBIOS reference manifests of one GPU report.

  GET {root}/v1/rim/{id}  ->  {"id": ..., "rim": base64(SWID tag), "sha256": hex, "rim_format": ...}

IDs as NVIDIA's verifier forms them from the report's opaque data:
  driver  NV_GPU_DRIVER_GH100_{driver version}, e.g. NV_GPU_DRIVER_GH100_550.90.07
  VBIOS   NV_GPU_VBIOS_{project}_{project SKU}_{chip SKU}_{version},
          e.g. NV_GPU_VBIOS_1010_0200_882_96009F0001
The answer's SHA-256 must match the decoded tag; the tag's XML signature and chain to the NVIDIA
RIM root, and every measurement, are checked by the GPU verifier (collateral "rim:driver",
"rim:vbios"). OCSP for the GPU certificate chain is not fetched here (see docs/collateral.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field

from attestation.errors import AttestationError, CollateralError
from attestation.fetch import Fetcher, FetchError
from attestation.nvidia import opaque, spdm
from attestation.nvidia.rim import MAX_RIM_BYTES

NVIDIA_RIM_SERVICE = "https://rim.attestation.nvidia.com"
MAX_ANSWER_BYTES = MAX_RIM_BYTES * 2
_ID = re.compile(r"NV_GPU_[A-Z0-9_]+\.?[0-9A-Za-z._]*")


def rim_ids(report_data: bytes) -> dict[str, str]:
    """{"driver": id, "vbios": id} for a GPU measurement report."""
    try:
        data = spdm.parse(report_data).response.opaque
        driver, vbios = data.driver_version, data.vbios_version
        project = data.text(opaque.PROJECT)
        project_sku = data.text(opaque.PROJECT_SKU)
        chip_sku = data.text(opaque.CHIP_SKU)
    except AttestationError as exc:
        raise CollateralError(f"cannot tell which RIMs the GPU report needs: {exc}") from exc
    missing = [
        n
        for n, v in (
            ("driver_version", driver),
            ("vbios_version", vbios),
            ("project", project),
            ("project_sku", project_sku),
            ("chip_sku", chip_sku),
        )
        if not v
    ]
    if missing:
        raise CollateralError(f"GPU report opaque data lacks {', '.join(missing)}: no RIM ID")
    assert vbios is not None
    ids = {
        "driver": f"NV_GPU_DRIVER_GH100_{driver}",
        "vbios": f"NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{vbios.replace('.', '').upper()}",
    }
    for kind, rim_id in ids.items():
        if not _ID.fullmatch(rim_id):
            raise CollateralError(f"GPU report: {kind} RIM ID {rim_id!r} has unexpected characters")
    return ids


@dataclass(frozen=True)
class RimServiceClient:
    root: str = NVIDIA_RIM_SERVICE
    fetcher: Fetcher = field(default_factory=Fetcher)

    def get(self, rim_id: str) -> bytes:
        doc = self.fetcher.get(
            f"nvidia/rim/{rim_id}", f"{self.root.rstrip('/')}/v1/rim/{rim_id}", limit=MAX_ANSWER_BYTES
        )
        try:
            answer = json.loads(doc.body)
            tag = base64.b64decode(answer["rim"], validate=True)
            digest = answer.get("sha256")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise FetchError(f"{doc.url}: not a RIM service answer ({exc.__class__.__name__})") from exc
        if not isinstance(answer, dict) or answer.get("id") not in (None, rim_id):
            raise FetchError(f"{doc.url}: answer is for {answer.get('id')!r}, asked for {rim_id!r}")
        if digest is not None and digest != hashlib.sha256(tag).hexdigest():
            raise FetchError(f"{doc.url}: sha256 {digest} is not the digest of the RIM it carries")
        if len(tag) > MAX_RIM_BYTES:
            raise FetchError(f"{doc.url}: RIM larger than {MAX_RIM_BYTES} bytes")
        return tag

    def collateral(self, report_data: bytes) -> dict[str, bytes]:
        """{"rim:driver": tag, "rim:vbios": tag}, as the GPU verifier reads them."""
        return {f"rim:{kind}": self.get(rim_id) for kind, rim_id in rim_ids(report_data).items()}
