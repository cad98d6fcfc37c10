"""Write OCI image layouts from the image-spec (v1.1), for tests: layers, configs, manifests,
indexes, layout directories and archives. Every digest is computed here over the exact bytes
written, as a registry or `buildah push --digestfile` would."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def descriptor(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


@dataclass
class Built:
    """Blobs by hex digest, plus the index.json entries and the digests a test compares with."""

    blobs: dict[str, bytes]
    manifests: dict[str, str]  # "os/arch" -> manifest digest
    index_digest: str | None
    entries: list[dict[str, object]]

    def add(self, data: bytes) -> None:
        self.blobs[hashlib.sha256(data).hexdigest()] = data


def image(
    built: Built, plat: str = "linux/amd64", files: dict[str, bytes] | None = None
) -> dict[str, object]:
    """Add one image's blobs; return the descriptor of its manifest."""
    os_, arch = plat.split("/")[:2]
    raw = layer_tar(files or {"bin/engine": b"#!/bin/sh\necho " + plat.encode() + b"\n"})
    layer = gzip.compress(raw, mtime=0)
    config = dumps(
        {
            "architecture": arch,
            "os": os_,
            "config": {"Cmd": ["/bin/engine"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        }
    )
    manifest = dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(CONFIG, config),
            "layers": [descriptor(LAYER_GZIP, layer)],
        }
    )
    for blob in (layer, config, manifest):
        built.add(blob)
    desc = descriptor(MANIFEST, manifest, platform={"os": os_, "architecture": arch})
    built.manifests[plat] = str(desc["digest"])
    return desc


def build(platforms: tuple[str, ...] = ("linux/amd64",), *, multi: bool = False, tag: str = "v1") -> Built:
    built = Built({}, {}, None, [])
    descs = [image(built, p) for p in platforms]
    if multi:
        index = dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": descs})
        built.add(index)
        top = descriptor(INDEX, index)
        built.index_digest = str(top["digest"])
        descs = [top]
    built.entries = [{**d, "annotations": {"org.opencontainers.image.ref.name": tag}} for d in descs]
    return built


def write_layout(root: Path, built: Built, *, index_doc: object | None = None) -> Path:
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_bytes(dumps({"imageLayoutVersion": "1.0.0"}))
    doc = (
        index_doc
        if index_doc is not None
        else {"schemaVersion": 2, "mediaType": INDEX, "manifests": built.entries}
    )
    (root / "index.json").write_bytes(dumps(doc))
    for hexd, data in built.blobs.items():
        (root / "blobs" / "sha256" / hexd).write_bytes(data)
    return root


def archive(layout: Path, out: Path, extra: list[tarfile.TarInfo] | None = None) -> Path:
    """A tar of the layout (what `oci-archive:` writes), plus optional hostile members."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
        for info in extra or []:
            data = io.BytesIO(b"x" * info.size) if info.isreg() else None
            tar.addfile(info, data)
    return out
