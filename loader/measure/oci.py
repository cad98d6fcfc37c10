"""Engines as OCI images: an image layout directory, or an archive of one (`oci-archive`, or a
`docker save` archive from Docker 25+, which carries an OCI layout beside its manifest.json).

The measurement of an image is its manifest digest (what `docker pull image@sha256:...` pins),
taken only after every blob on the path to it was checked against its descriptor: the index
(or indexes), the manifest, the config and every layer, each by SHA-256 and by size. A
multi-platform index is resolved to one platform (configured, else this machine's); the digest
is that platform's image manifest, i.e. the image that runs.

Staging writes a fresh layout holding only the verified blobs and an index.json naming only
the resolved manifest, so nothing unverified (stray blobs, other tags, an edited index.json)
reaches the container runtime.

Refused: blob digests other than sha256; JSON with duplicate keys or over MAX_JSON bytes;
unknown media types; archives that are compressed, hold absolute names, `..`, duplicate
names, devices or fifos, or links leaving the archive; symlinks in a layout directory; legacy
`docker save` archives (manifest.json only): they carry no manifest digest to pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from certs import jsonlimits
from loader.errors import InputError
from loader.measure.digest import Digest, Meter, hash_stream, open_regular, open_tree

MAX_JSON = 4 << 20
MAX_MEMBERS = 100_000
MAX_DESCRIPTORS = 10_000
MAX_INDEX_DEPTH = 2
MAX_LINK_HOPS = 8
DETECT_MEMBERS = 10_000
LAYOUT_VERSION = "1.0.0"

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
CONFIG_TYPES = (
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
)
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
_HEX = frozenset("0123456789abcdef")
_MACHINES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm/v7",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str, where: str = "platform") -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InputError(f"{where}: expected OS/ARCH[/VARIANT] (e.g. linux/amd64), found {text!r}")
        return cls(*parts)

    @classmethod
    def host(cls) -> Platform:
        machine = host.machine().lower()
        return cls.parse("linux/" + _MACHINES.get(machine, machine))

    def matches(self, other: Platform) -> bool:
        """Does an image built for `other` satisfy this requested platform?"""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not self.variant or not other.variant or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None
    ref: str | None

    @property
    def hex(self) -> str:
        return self.digest[7:]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        return out


@dataclass(frozen=True)
class Image:
    """A verified image: the manifest that runs, its config and layers, and the indexes above it."""

    indexes: tuple[Descriptor, ...]
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    platform: Platform
    config_json: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def image_id(self) -> str:
        """What container engines call the image ID: the config digest."""
        return self.config.digest

    @property
    def size(self) -> int:
        return sum(d.size for d in (*self.indexes, self.manifest, self.config, *self.layers))


# --- blob sources ------------------------------------------------------------------------------


class Source(Protocol):
    where: str

    def exists(self, name: str) -> bool: ...

    def open(self, name: str) -> BinaryIO: ...


class LayoutDir:
    """An image layout directory, read descriptor-relative without following symlinks."""

    def __init__(self, path: Path) -> None:
        self.path, self.where = path, str(path)
        self.fd = open_tree(path)

    def close(self) -> None:
        os.close(self.fd)

    def _parent(self, name: str) -> tuple[int, str, list[int]]:
        parts = name.split("/")
        opened: list[int] = []
        fd = self.fd
        for part in parts[:-1]:
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                for o in opened:
                    os.close(o)
                raise InputError(f"{self.where}: {name}: cannot open {part!r}: {exc.strerror}") from exc
            opened.append(fd)
        return fd, parts[-1], opened

    def exists(self, name: str) -> bool:
        try:
            fd, last, opened = self._parent(name)
        except InputError:
            return False
        try:
            return not stat.S_ISDIR(os.stat(last, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            return False
        finally:
            for o in opened:
                os.close(o)

    def open(self, name: str) -> BinaryIO:
        fd, last, opened = self._parent(name)
        try:
            file_fd = open_regular(last, dir_fd=fd, shown=f"{self.where}/{name}")
        finally:
            for o in opened:
                os.close(o)
        return os.fdopen(file_fd, "rb", buffering=0)


class TarArchive:
    """An uncompressed tar of a layout; every member header is checked before anything is read."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        fd = open_regular(path, shown=path)
        self.file = os.fdopen(fd, "rb")
        try:
            self.tar = tarfile.open(fileobj=self.file, mode="r:")  # noqa: SIM115
        except tarfile.TarError as exc:
            self.file.close()
            raise InputError(f"{path}: not an uncompressed tar archive ({exc}); decompress it first") from exc
        try:
            self.members = self._scan()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.tar.close()
        self.file.close()

    def _scan(self) -> dict[str, tarfile.TarInfo]:
        members: dict[str, tarfile.TarInfo] = {}
        count = 0
        try:
            for info in self.tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise InputError(f"{self.where}: more than {MAX_MEMBERS} archive members")
                name = self._name(info)
                if name in members:
                    raise InputError(f"{self.where}: member {info.name!r} appears twice; refusing ambiguity")
                members[name] = info
        except tarfile.TarError as exc:
            raise InputError(f"{self.where}: corrupt tar archive: {exc}") from exc
        for name, info in members.items():
            if info.issym() or info.islnk():
                self._resolve(name, members)
        return members

    def _name(self, info: tarfile.TarInfo) -> str:
        raw = info.name
        if raw.startswith("/") or "\x00" in raw:
            raise InputError(f"{self.where}: member {raw!r} has an absolute name; refused")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise InputError(f"{self.where}: member {raw!r} contains '..'; refused")
        if not parts and not info.isdir():
            raise InputError(f"{self.where}: member {raw!r} has an empty name; refused")
        if not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            raise InputError(f"{self.where}: member {raw!r} is a device, fifo or other special file; refused")
        return "/".join(parts) or "."

    def _resolve(self, name: str, members: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo:
        """Follow links inside the archive; refuse any that leave it or do not end at a file."""
        info = members[name]
        for _ in range(MAX_LINK_HOPS):
            if not (info.issym() or info.islnk()):
                return info
            target = info.linkname
            if info.issym():
                target = posixpath.join(posixpath.dirname(name), target)
            if target.startswith("/"):
                raise InputError(f"{self.where}: link {name!r} -> {info.linkname!r} is absolute; refused")
            norm = posixpath.normpath(target)
            if norm == ".." or norm.startswith("../"):
                raise InputError(f"{self.where}: link {name!r} -> {info.linkname!r} leaves the archive")
            if norm not in members:
                raise InputError(f"{self.where}: link {name!r} -> {info.linkname!r} points to nothing")
            name, info = norm, members[norm]
        raise InputError(f"{self.where}: link {name!r}: more than {MAX_LINK_HOPS} hops")

    def exists(self, name: str) -> bool:
        return name in self.members and not self.members[name].isdir()

    def open(self, name: str) -> BinaryIO:
        if not self.exists(name):
            raise InputError(f"{self.where}: {name}: not in the archive")
        info = self._resolve(name, self.members)
        if not info.isreg():
            raise InputError(f"{self.where}: {name}: not a regular file")
        f = self.tar.extractfile(info)
        assert f is not None
        return f  # type: ignore[return-value]


@contextmanager
def open_source(path: Path) -> Iterator[LayoutDir | TarArchive]:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        src: LayoutDir | TarArchive = LayoutDir(path)
    elif stat.S_ISREG(st.st_mode):
        src = TarArchive(path)
    else:
        raise InputError(f"{path}: an OCI image is a layout directory or a tar archive")
    try:
        yield src
    finally:
        src.close()


def detect(path: Path) -> bool:
    """Does `path` look like an OCI image (layout dir, or tar with oci-layout/manifest.json)?

    Cheap on any input: only uncompressed tar headers are read (tarfile.is_tarfile would try
    every decompressor over the whole file), at most DETECT_MEMBERS of them.
    """
    try:
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            return stat.S_ISREG(os.stat(path / "oci-layout", follow_symlinks=False).st_mode)
        if not stat.S_ISREG(st.st_mode):
            return False
        with tarfile.open(path, mode="r:") as tar:
            for count, info in enumerate(tar):
                if posixpath.normpath(info.name) in ("oci-layout", "manifest.json"):
                    return True
                if count >= DETECT_MEMBERS:
                    break
        return False
    except (OSError, tarfile.TarError):
        return False


# --- strict JSON and descriptors ---------------------------------------------------------------


def parse_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = jsonlimits.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    return doc


def _field(doc: dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    if key not in doc:
        if required:
            raise InputError(f"{where}: {key}: missing")
        return None
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InputError(f"{where}: {key}: expected {kind.__name__}, found {value!r}")
    return value


def parse_descriptor(doc: object, where: str, allowed: tuple[str, ...]) -> Descriptor:
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected a descriptor object")
    media_type = _field(doc, "mediaType", str, where)
    if media_type not in allowed:
        raise InputError(f"{where}: mediaType: expected one of {list(allowed)}, found {media_type!r}")
    digest = _field(doc, "digest", str, where)
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256":
        raise InputError(f"{where}: digest: only sha256 blobs are supported, found {digest!r}")
    if len(hexpart) != 64 or not set(hexpart) <= _HEX:
        raise InputError(f"{where}: digest: expected sha256:<64 lowercase hex>, found {digest!r}")
    size = _field(doc, "size", int, where)
    if size < 0:
        raise InputError(f"{where}: size: expected a non-negative integer, found {size}")
    plat = None
    if (p := _field(doc, "platform", dict, where, required=False)) is not None:
        plat = Platform(
            _field(p, "os", str, f"{where}.platform"),
            _field(p, "architecture", str, f"{where}.platform"),
            _field(p, "variant", str, f"{where}.platform", required=False) or "",
        )
    annotations = _field(doc, "annotations", dict, where, required=False) or {}
    ref = annotations.get("org.opencontainers.image.ref.name")
    return Descriptor(media_type, digest, size, plat, ref if isinstance(ref, str) else None)


def _check_schema(doc: dict[str, Any], where: str, media_type: str) -> None:
    if _field(doc, "schemaVersion", int, where) != 2:
        raise InputError(f"{where}: schemaVersion: expected 2, found {doc['schemaVersion']!r}")
    declared = _field(doc, "mediaType", str, where, required=False)
    if declared is not None and declared != media_type:
        raise InputError(f"{where}: mediaType {declared!r} differs from its descriptor's {media_type!r}")


def _descriptor_list(doc: dict[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> list[Descriptor]:
    items = _field(doc, key, list, where)
    if len(items) > MAX_DESCRIPTORS:
        raise InputError(f"{where}: {key}: more than {MAX_DESCRIPTORS} entries")
    return [parse_descriptor(d, f"{where}: {key}[{i}]", allowed) for i, d in enumerate(items)]


# --- reading and verifying -----------------------------------------------------------------------


def _read_small(src: Source, name: str, limit: int = MAX_JSON) -> bytes:
    if not src.exists(name):
        raise InputError(f"{src.where}: {name}: missing")
    with src.open(name) as f:
        data = _read_upto(f, limit + 1)
    if len(data) > limit:
        raise InputError(f"{src.where}: {name}: larger than {limit} bytes")
    return data


def _read_upto(f: BinaryIO, n: int) -> bytes:
    parts = []
    while n > 0 and (part := f.read(n)):
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def blob_name(desc: Descriptor) -> str:
    return f"blobs/sha256/{desc.hex}"


def read_blob(src: Source, desc: Descriptor) -> bytes:
    """Read a small (JSON) blob and check it against its descriptor."""
    where = f"{src.where}: {blob_name(desc)}"
    if desc.size > MAX_JSON:
        raise InputError(f"{where}: descriptor size {desc.size} exceeds the {MAX_JSON}-byte limit")
    data = _read_small(src, blob_name(desc), desc.size)
    _check_blob(where, desc, hashlib.sha256(data).hexdigest(), len(data))
    return data


def _check_blob(where: str, desc: Descriptor, found_hex: str, found_size: int) -> None:
    if found_size != desc.size:
        raise InputError(f"{where}: size: descriptor says {desc.size} bytes, blob has {found_size}")
    if found_hex != desc.hex:
        raise InputError(f"{where}: digest: descriptor says {desc.digest}, blob is sha256:{found_hex}")


def copy_blob(src: Source, desc: Descriptor, sink: int | None, meter: Meter | None) -> None:
    """Stream a blob through SHA-256 (and into `sink`), then check it against its descriptor."""
    where = f"{src.where}: {blob_name(desc)}"
    if not src.exists(blob_name(desc)):
        raise InputError(f"{where}: missing")
    with src.open(blob_name(desc)) as f:
        raw, size = hash_stream(f, sink, meter, limit=desc.size + 1, shown=where)
    _check_blob(where, desc, raw.hex(), size)


def _top_index(src: Source) -> list[Descriptor]:
    if not src.exists("oci-layout"):
        if src.exists("manifest.json"):
            raise InputError(
                f"{src.where}: a legacy 'docker save' archive (manifest.json without an OCI layout) "
                "carries no manifest digest; save it with Docker 25+ or convert it with "
                "'skopeo copy docker-archive:IN oci-archive:OUT'"
            )
        raise InputError(f"{src.where}: oci-layout: missing; not an OCI image layout")
    layout = parse_json(_read_small(src, "oci-layout", 4096), f"{src.where}: oci-layout")
    version = layout.get("imageLayoutVersion")
    if version != LAYOUT_VERSION:
        raise InputError(
            f"{src.where}: oci-layout: expected imageLayoutVersion {LAYOUT_VERSION!r}, found {version!r}"
        )
    where = f"{src.where}: index.json"
    index = parse_json(_read_small(src, "index.json"), where)
    _check_schema(index, where, INDEX_TYPES[0])
    return _descriptor_list(index, "manifests", where, INDEX_TYPES + MANIFEST_TYPES)


def _select(descs: list[Descriptor], plat: Platform, where: str, ref: str | None) -> Descriptor:
    if ref is not None:
        descs = [d for d in descs if d.ref == ref]
        if not descs:
            raise InputError(f"{where}: no image is tagged {ref!r}")
    unique = {d.digest: d for d in descs}
    if len(unique) == 1:
        return next(iter(unique.values()))
    if not unique:
        raise InputError(f"{where}: lists no image")
    fitting = {k: d for k, d in unique.items() if d.platform is not None and plat.matches(d.platform)}
    if len(fitting) == 1:
        return next(iter(fitting.values()))
    offered = sorted(
        {str(d.platform) if d.platform else f"untagged {d.digest[:19]}" for d in unique.values()}
    )
    what = "no image for" if not fitting else "several images for"
    raise InputError(f"{where}: {what} platform {plat} (offers {', '.join(offered)}); choose one")


def resolve(src: Source, plat: Platform, ref: str | None = None) -> Image:
    """Walk index -> (index ->) manifest -> config, verifying each JSON blob; layers not read yet."""
    desc = _select(_top_index(src), plat, f"{src.where}: index.json", ref)
    indexes: list[Descriptor] = []
    while desc.media_type in INDEX_TYPES:
        if len(indexes) >= MAX_INDEX_DEPTH:
            raise InputError(f"{src.where}: indexes nested deeper than {MAX_INDEX_DEPTH}")
        indexes.append(desc)
        where = f"{src.where}: index {desc.digest}"
        doc = parse_json(read_blob(src, desc), where)
        _check_schema(doc, where, desc.media_type)
        desc = _select(
            _descriptor_list(doc, "manifests", where, INDEX_TYPES + MANIFEST_TYPES), plat, where, None
        )
    where = f"{src.where}: manifest {desc.digest}"
    manifest = parse_json(read_blob(src, desc), where)
    _check_schema(manifest, where, desc.media_type)
    config = parse_descriptor(_field(manifest, "config", dict, where), f"{where}: config", CONFIG_TYPES)
    layers = _descriptor_list(manifest, "layers", where, LAYER_TYPES)
    config_json = parse_json(read_blob(src, config), f"{src.where}: config {config.digest}")
    _check_config(config_json, len(layers), plat, f"{src.where}: config {config.digest}")
    return Image(tuple(indexes), desc, config, tuple(layers), plat, config_json)


def _check_config(doc: dict[str, Any], layers: int, plat: Platform, where: str) -> None:
    built = Platform(
        _field(doc, "os", str, where),
        _field(doc, "architecture", str, where),
        _field(doc, "variant", str, where, required=False) or "",
    )
    if not plat.matches(built):
        raise InputError(f"{where}: image is built for {built}, configured platform is {plat}")
    rootfs = _field(doc, "rootfs", dict, where)
    diff_ids = _field(rootfs, "diff_ids", list, f"{where}: rootfs")
    if len(diff_ids) != layers:
        raise InputError(f"{where}: rootfs.diff_ids lists {len(diff_ids)} layers, the manifest {layers}")


def _platform(platform: str | Platform | None) -> Platform:
    if isinstance(platform, Platform):
        return platform
    return Platform.host() if platform is None else Platform.parse(platform)


def verify_image(
    path: Path, *, platform: str | Platform | None = None, ref: str | None = None, meter: Meter | None = None
) -> Image:
    """Resolve and fully verify the image at `path` (layers hashed in place)."""
    with open_source(path) as src:
        image = resolve(src, _platform(platform), ref)
        for layer in image.layers:
            copy_blob(src, layer, None, meter)
    return image


def digest_image(
    path: Path, *, platform: str | Platform | None = None, ref: str | None = None, meter: Meter | None = None
) -> Digest:
    image = verify_image(path, platform=platform, ref=ref, meter=meter)
    return _as_digest(image)


def _as_digest(image: Image) -> Digest:
    return Digest("oci", image.digest, image.size, 2 + len(image.indexes) + len(image.layers))


def stage_image(
    path: Path, dest: Path, *, platform: str | Platform | None = None, meter: Meter | None = None
) -> Digest:
    """Copy the verified image into a fresh layout at `dest`, verifying each blob as it is copied."""
    with open_source(path) as src:
        image = resolve(src, _platform(platform), None)
        blobs = dest / "blobs" / "sha256"
        blobs.mkdir(mode=0o700, parents=True)
        for desc in (*image.indexes, image.manifest, image.config):
            _write_new(blobs / desc.hex, read_blob(src, desc))
        for layer in image.layers:
            fd = _create(blobs / layer.hex)
            try:
                copy_blob(src, layer, fd, meter)
                os.fchmod(fd, 0o400)
            finally:
                os.close(fd)
    write_layout(dest, image)
    return _as_digest(image)


def write_layout(dest: Path, image: Image) -> None:
    """The staged layout's own oci-layout and index.json: one entry, the resolved manifest."""
    entry = image.manifest.to_json()
    entry["platform"] = {"os": image.platform.os, "architecture": image.platform.architecture}
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": [entry]}
    _write_new(dest / "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
    _write_new(dest / "index.json", json.dumps(index, sort_keys=True).encode())


def _create(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InputError(f"{path}: cannot create staged blob: {exc.strerror}") from exc


def _write_new(path: Path, data: bytes) -> None:
    fd = _create(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o400)
    finally:
        os.close(fd)
