"""One entry point for measuring a path as the loader would: a file or directory ("plain"), an
OCI image ("oci"), or whichever it looks like ("auto", as for the engine; see loader.measure.oci.detect).
Used by `trusted-loader digest` and `replay`."""

from __future__ import annotations

from pathlib import Path

from loader.errors import InputError
from loader.measure.digest import Digest, Meter, digest_path

FORMATS = ("auto", "plain", "oci")


def measure(
    path: Path,
    *,
    format: str = "auto",
    platform: str | None = None,
    ref: str | None = None,
    meter: Meter | None = None,
) -> Digest:
    from loader.measure import oci

    if format not in FORMATS:
        raise InputError(f"{path}: format must be one of {FORMATS}, found {format!r}")
    if format == "oci" or (format == "auto" and oci.detect(path)):
        return oci.digest_image(path, platform=platform, ref=ref, meter=meter)
    return digest_path(path, meter=meter)


def format_for_kind(kind: str) -> str:
    """The format that reproduces a report's input `kind`."""
    return "oci" if kind == "oci" else "plain"
