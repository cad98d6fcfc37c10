"""OCI engines: layouts and archives written from the image-spec (always run), and images built
by buildah (run when buildah is installed). The digest is the manifest digest written by the
tool; every blob is checked; hostile archives and tampered blobs are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from loader.boot.stage import InputSpec, stage_input
from loader.errors import InputError
from loader.measure import oci
from tests import oci_helpers as h


def layout(tmp_path: Path, **kw) -> tuple[Path, h.Built]:
    built = h.build(**kw)
    return h.write_layout(tmp_path / "layout", built), built


def test_single_image_layout_digest_is_its_manifest_digest(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    d = oci.digest_image(path, platform="linux/amd64")
    assert d.kind == "oci"
    assert d.digest == built.manifests["linux/amd64"]
    assert d.size == sum(len(b) for b in built.blobs.values())


def test_archive_of_layout_has_the_same_digest(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    tar = h.archive(path, tmp_path / "image.tar")
    assert oci.digest_image(tar, platform="linux/amd64").digest == built.manifests["linux/amd64"]
    assert oci.detect(tar) and oci.detect(path)


@pytest.mark.parametrize("plat", ["linux/amd64", "linux/arm64", "linux/arm64/v8"])
def test_multi_platform_index_resolves_to_the_configured_platform(tmp_path: Path, plat: str) -> None:
    path, built = layout(tmp_path, platforms=("linux/amd64", "linux/arm64"), multi=True)
    image = oci.verify_image(path, platform=plat)
    assert image.digest == built.manifests["/".join(plat.split("/")[:2])]
    assert [d.digest for d in image.indexes] == [built.index_digest]


def test_platform_absent_from_index_is_refused_naming_what_is_offered(tmp_path: Path) -> None:
    path, _ = layout(tmp_path, platforms=("linux/amd64", "linux/arm64"), multi=True)
    with pytest.raises(
        InputError, match=r"no image for platform linux/s390x \(offers linux/amd64, linux/arm64\)"
    ):
        oci.digest_image(path, platform="linux/s390x")


def test_single_image_for_another_platform_is_refused(tmp_path: Path) -> None:
    path, _ = layout(tmp_path, platforms=("linux/arm64",))
    with pytest.raises(InputError, match="built for linux/arm64, configured platform is linux/amd64"):
        oci.digest_image(path, platform="linux/amd64")


def test_two_tags_in_index_json_need_a_ref(tmp_path: Path) -> None:
    b1, b2 = h.build(tag="one"), h.Built({}, {}, None, [])
    d2 = h.image(b2, "linux/amd64", files={"other": b"2"})
    b1.blobs.update(b2.blobs)
    b1.entries.append({**d2, "annotations": {"org.opencontainers.image.ref.name": "two"}})
    path = h.write_layout(tmp_path / "l", b1)
    with pytest.raises(InputError, match="several images for platform"):
        oci.digest_image(path, platform="linux/amd64")
    assert oci.digest_image(path, platform="linux/amd64", ref="two").digest == d2["digest"]


def blob_path(layout_dir: Path, digest: str) -> Path:
    return layout_dir / "blobs" / "sha256" / digest[7:]


def blobs_by_role(path: Path, built: h.Built) -> dict[str, Path]:
    mdigest = built.manifests["linux/amd64"]
    manifest = json.loads(blob_path(path, mdigest).read_bytes())
    return {
        "manifest": blob_path(path, mdigest),
        "config": blob_path(path, manifest["config"]["digest"]),
        "layer": blob_path(path, manifest["layers"][0]["digest"]),
    }


@pytest.mark.parametrize("role", ["manifest", "config", "layer"])
def test_every_single_byte_change_in_a_blob_is_refused(tmp_path: Path, role: str) -> None:
    """Flip one bit at every position of the blob (deterministic, all positions)."""
    path, built = layout(tmp_path)
    target = blobs_by_role(path, built)[role]
    original = target.read_bytes()
    for i in range(len(original)):
        tampered = bytearray(original)
        tampered[i] ^= 1 << (i % 8)
        target.write_bytes(bytes(tampered))
        with pytest.raises(InputError, match="digest: descriptor says"):
            oci.verify_image(path, platform="linux/amd64")
    target.write_bytes(original)
    assert oci.digest_image(path, platform="linux/amd64").digest == built.manifests["linux/amd64"]


@pytest.mark.parametrize("change", [b"", b"x"])
def test_truncated_or_extended_blob_is_refused_by_size(tmp_path: Path, change: bytes) -> None:
    path, built = layout(tmp_path)
    target = blobs_by_role(path, built)["layer"]
    data = target.read_bytes()
    target.write_bytes(data[:-1] if not change else data + change)
    with pytest.raises(InputError, match="size: descriptor says"):
        oci.verify_image(path, platform="linux/amd64")


def test_missing_blob_is_refused(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    blobs_by_role(path, built)["config"].unlink()
    with pytest.raises(InputError, match="missing"):
        oci.verify_image(path, platform="linux/amd64")


def test_edited_index_json_pointing_elsewhere_is_refused(tmp_path: Path) -> None:
    path, _ = layout(tmp_path)
    doc = json.loads((path / "index.json").read_bytes())
    doc["manifests"][0]["digest"] = "sha256:" + "0" * 64
    (path / "index.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="missing"):
        oci.verify_image(path, platform="linux/amd64")


@pytest.mark.parametrize(
    ("index_json", "message"),
    [
        (b'{"schemaVersion":2,"schemaVersion":2,"manifests":[]}', "duplicate field"),
        (b'{"schemaVersion":1,"manifests":[]}', "schemaVersion: expected 2"),
        (b"[1]", "expected a JSON object"),
        (b"\xff", "not valid JSON"),
        (b'{"schemaVersion":2,"manifests":[{"mediaType":"text/plain","digest":"x","size":1}]}', "mediaType"),
    ],
)
def test_malformed_index_json_is_refused(tmp_path: Path, index_json: bytes, message: str) -> None:
    path, _ = layout(tmp_path)
    (path / "index.json").write_bytes(index_json)
    with pytest.raises(InputError, match=message):
        oci.verify_image(path, platform="linux/amd64")


def test_non_sha256_descriptor_is_refused(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    entries = [{**built.entries[0], "digest": "sha512:" + "a" * 128}]
    h.write_layout(path, built, index_doc={"schemaVersion": 2, "manifests": entries})
    with pytest.raises(InputError, match="only sha256"):
        oci.verify_image(path, platform="linux/amd64")


def test_symlinked_blob_in_layout_is_refused(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    config = blobs_by_role(path, built)["config"]
    moved = tmp_path / "elsewhere"
    config.rename(moved)
    config.symlink_to(moved)
    with pytest.raises(InputError, match="symbolic link"):
        oci.verify_image(path, platform="linux/amd64")


def test_missing_oci_layout_file_is_refused(tmp_path: Path) -> None:
    path, _ = layout(tmp_path)
    (path / "oci-layout").unlink()
    with pytest.raises(InputError, match="oci-layout: missing"):
        oci.verify_image(path, platform="linux/amd64")
    assert not oci.detect(path)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = size if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info


@pytest.mark.parametrize(
    ("hostile", "message"),
    [
        (member("/etc/evil"), "absolute name"),
        (member("blobs/../../evil"), "contains '..'"),
        (member("evil", tarfile.SYMTYPE, "../../etc/passwd"), "leaves the archive"),
        (member("evil", tarfile.SYMTYPE, "/etc/passwd"), "is absolute"),
        (member("blobs/x", tarfile.SYMTYPE, "../../outside"), "leaves the archive"),
        (member("evil", tarfile.LNKTYPE, "../outside"), "leaves the archive"),
        (member("dangling", tarfile.SYMTYPE, "nothing-here"), "points to nothing"),
        (member("dev", tarfile.CHRTYPE), "device, fifo"),
        (member("blk", tarfile.BLKTYPE), "device, fifo"),
        (member("fifo", tarfile.FIFOTYPE), "device, fifo"),
        (member("index.json"), "appears twice"),
    ],
)
def test_hostile_archive_members_are_refused(tmp_path: Path, hostile: tarfile.TarInfo, message: str) -> None:
    path, _ = layout(tmp_path)
    tar = h.archive(path, tmp_path / "image.tar", extra=[hostile])
    with pytest.raises(InputError, match=message):
        oci.digest_image(tar, platform="linux/amd64")


def test_link_inside_the_archive_is_followed(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    tar = h.archive(path, tmp_path / "image.tar", extra=[member("alias", tarfile.SYMTYPE, "index.json")])
    assert oci.digest_image(tar, platform="linux/amd64").digest == built.manifests["linux/amd64"]


def test_compressed_archive_is_refused_with_advice(tmp_path: Path) -> None:
    path, _ = layout(tmp_path)
    with tarfile.open(tmp_path / "image.tar.gz", "w:gz") as tar:
        tar.add(path, arcname=".")
    with pytest.raises(InputError, match="not an uncompressed tar archive"):
        oci.digest_image(tmp_path / "image.tar.gz", platform="linux/amd64")


def test_legacy_docker_save_archive_is_refused_with_advice(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text('[{"Config":"c.json","Layers":["l/layer.tar"]}]')
    tar = h.archive(legacy, tmp_path / "legacy.tar")
    assert oci.detect(tar)
    with pytest.raises(InputError, match="legacy 'docker save' archive"):
        oci.digest_image(tar, platform="linux/amd64")


@pytest.mark.parametrize("as_archive", [False, True])
def test_staging_writes_only_verified_blobs_and_a_fresh_index(tmp_path: Path, as_archive: bool) -> None:
    path, built = layout(tmp_path, platforms=("linux/amd64", "linux/arm64"), multi=True)
    stray = b"not referenced"
    (path / "blobs" / "sha256" / ("f" * 64)).write_bytes(stray)
    src = h.archive(path, tmp_path / "image.tar") if as_archive else path
    spec = InputSpec("engine", "engine", src, format="auto", platform="linux/amd64")
    m = stage_input(spec, tmp_path / "staging")
    want = built.manifests["linux/amd64"]
    assert (m.digest.kind, m.digest.digest) == ("oci", want)
    staged = {p.name for p in (m.staged / "blobs" / "sha256").iterdir()}
    image = oci.verify_image(path, platform="linux/amd64")
    expected = {d.hex for d in (*image.indexes, image.manifest, image.config, *image.layers)}
    assert staged == expected
    index = json.loads((m.staged / "index.json").read_bytes())
    assert [e["digest"] for e in index["manifests"]] == [want]
    assert oci.digest_image(m.staged, platform="linux/amd64").digest == want
    for p in (m.staged / "blobs" / "sha256").iterdir():
        assert p.stat().st_mode & 0o777 == 0o400


def test_staging_a_tampered_layer_fails(tmp_path: Path) -> None:
    path, built = layout(tmp_path)
    target = blobs_by_role(path, built)["layer"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(InputError, match="digest: descriptor says"):
        stage_input(InputSpec("engine", "engine", path, format="oci", platform="linux/amd64"), tmp_path / "s")


def test_platform_parsing() -> None:
    assert str(oci.Platform.parse("linux/arm/v7")) == "linux/arm/v7"
    assert oci.Platform.host().os == "linux"
    with pytest.raises(InputError, match="OS/ARCH"):
        oci.Platform.parse("amd64")


# --- images built by buildah ---------------------------------------------------------------------

BUILDAH = shutil.which("buildah")


def buildah(*args: str, cwd: Path) -> str:
    cmd = [BUILDAH or "buildah", "--storage-driver", "vfs", *args]
    env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
    return subprocess.run(
        cmd, cwd=cwd, check=True, capture_output=True, text=True, env=env, timeout=120
    ).stdout


@pytest.mark.skipif(BUILDAH is None, reason="buildah not installed (apt-get install -y buildah)")
def test_buildah_images_digest_equals_the_digest_buildah_wrote(tmp_path: Path) -> None:
    (tmp_path / "engine.sh").write_text("#!/bin/sh\necho engine\n")
    try:
        ctr = buildah("from", "scratch", cwd=tmp_path).strip()
        buildah("copy", ctr, "engine.sh", "/engine.sh", cwd=tmp_path)
        buildah("config", "--cmd", "/engine.sh", "--arch", "amd64", "--os", "linux", ctr, cwd=tmp_path)
        name = f"tl-test-{tmp_path.name.lower()}"
        buildah("commit", "--format", "oci", ctr, name, cwd=tmp_path)
        buildah("rm", ctr, cwd=tmp_path)
        for dest, target in (("oci", tmp_path / "layout"), ("oci-archive", tmp_path / "image.tar")):
            buildah(
                "push",
                "--digestfile",
                str(tmp_path / f"{dest}.digest"),
                name,
                f"{dest}:{target}:v1",
                cwd=tmp_path,
            )
            written = (tmp_path / f"{dest}.digest").read_text().strip()
            assert oci.digest_image(target, platform="linux/amd64").digest == written
            m = stage_input(
                InputSpec("engine", "engine", target, format="auto"), tmp_path / f"staging-{dest}"
            )
            assert (m.digest.kind, m.digest.digest) == ("oci", written)
        buildah("push", name, f"docker-archive:{tmp_path / 'docker.tar'}:{name}:v1", cwd=tmp_path)
        with pytest.raises(InputError, match="legacy 'docker save' archive"):
            oci.digest_image(tmp_path / "docker.tar", platform="linux/amd64")
        buildah("rmi", name, cwd=tmp_path)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"buildah failed: {exc.stderr}")


def test_detect_is_cheap_on_a_large_file_of_zeros(tmp_path: Path) -> None:
    """tarfile.is_tarfile tries every decompressor over the whole file (seconds per 32 MiB of
    zeros); detection must only read tar headers."""
    import time

    big = tmp_path / "zeros"
    with open(big, "wb") as f:
        f.truncate(256 << 20)
    start = time.monotonic()
    assert not oci.detect(big)
    assert time.monotonic() - start < 1.0
