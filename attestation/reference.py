"""Reference values and appraisal: is verified evidence the platform a verifier pins?

Verification (each backend's verifier) says evidence is genuine; appraisal, here, says it is
acceptable: its measurements are one of the pinned images, it is not a debug TEE, and for
hardware its TCB was evaluated. One implementation serves `report verify`, `replay`,
`grant create`, `output open --report`, `evidence verify` and the CA (docs/appraisal.md).

Document (strict JSON, certs/jsonlimits; unknown or duplicate fields refused):
  {"format": "trusted-loader/reference-values/v1",
   "platforms": [{"name": "...", "type": "tdx"|"sev-snp"|"nvidia"|"mock"|"mock-gpu",
                  "values": {CLAIM: [accepted values...]},     allowed sets per claim
                  "tcb_status": ["UpToDate"],                  tdx only (default UpToDate)
                  "min_tcb": {"bootloader": 3, ...}}]}         sev-snp only
Evidence matches a platform entry when every claim the entry pins holds one of its values;
it passes when it matches any entry of its type (several images, several entries). Each type
has claims an entry must pin (REQUIRED), so an entry cannot accept any image by omission.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attestation.errors import AttestationError
from attestation.evidence import Check, Result

FORMAT = "trusted-loader/reference-values/v1"
MAX_REFERENCE_BYTES = 1 << 20
MAX_PLATFORMS = 256
MAX_VALUES = 1024

# claim -> how values are written: "hex" (compared case-insensitively), "text", "int".
CLAIMS: dict[str, dict[str, str]] = {
    "tdx": {
        **dict.fromkeys(
            (
                "mrtd",
                "rtmr0",
                "rtmr1",
                "rtmr2",
                "rtmr3",
                "mrseam",
                "mrsignerseam",
                "seam_attributes",
                "td_attributes",
                "xfam",
                "mrconfigid",
                "mrowner",
                "mrownerconfig",
            ),
            "hex",
        ),
        "tee_tcb_svn": "hex",
    },
    "sev-snp": {
        "measurement": "hex",
        "host_data": "hex",
        "id_key_digest": "hex",
        "author_key_digest": "hex",
        "family_id": "hex",
        "image_id": "hex",
        "policy.raw": "hex",
        "vmpl": "int",
        "guest_svn": "int",
    },
    "nvidia": {"driver_version": "text", "vbios_version": "text", "fwid": "hex", "rims.tag_id": "text"},
    "mock": dict.fromkeys(("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"), "hex"),
}
CLAIMS["mock-gpu"] = CLAIMS["nvidia"]
REQUIRED: dict[str, tuple[str, ...]] = {
    "tdx": ("mrtd", "rtmr0", "rtmr1", "rtmr2", "mrseam", "td_attributes", "xfam"),
    "sev-snp": ("measurement", "policy.raw", "vmpl"),
    "nvidia": ("driver_version", "vbios_version"),
    "mock-gpu": ("driver_version", "vbios_version"),
    "mock": ("mrtd", "rtmr0", "rtmr1", "rtmr2"),
}
SNP_TCB = ("bootloader", "tee", "snp", "microcode", "fmc")
_ENTRY = {"name", "type", "values", "tcb_status", "min_tcb"}


class ReferenceError(AttestationError):
    """A reference-values document is malformed; the message names the field."""


@dataclass(frozen=True)
class Platform:
    name: str
    type: str
    values: Mapping[str, frozenset[str | int]]
    tcb_status: tuple[str, ...] = ("UpToDate",)
    min_tcb: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceValues:
    platforms: tuple[Platform, ...]
    digest: str = ""
    source: str = "reference values"

    def for_type(self, kind: str) -> tuple[Platform, ...]:
        return tuple(p for p in self.platforms if p.type == kind)


@dataclass(frozen=True)
class Appraisal:
    """What a verifier pins: reference values, or explicitly any image; debug TEEs allowed?"""

    reference: ReferenceValues | None = None
    any_image: bool = False
    allow_debug: bool = False

    def describe(self) -> str:
        if self.reference is not None:
            return f"reference values {self.reference.source} ({self.reference.digest})"
        return "ANY IMAGE ACCEPTED (--any-image)" if self.any_image else "no reference values"

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference.source if self.reference else None,
            "reference_digest": self.reference.digest if self.reference else None,
            "any_image": self.any_image,
            "allow_debug": self.allow_debug,
        }


def parse_reference(raw: bytes, source: str) -> ReferenceValues:
    """Parse a reference-values document; errors name `source` and the field."""
    import hashlib

    from certs import jsonlimits

    if len(raw) > MAX_REFERENCE_BYTES:
        raise ReferenceError(f"{source}: {len(raw)} bytes, more than the {MAX_REFERENCE_BYTES} allowed")
    try:
        doc = jsonlimits.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReferenceError(f"{source}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "platforms"}:
        raise ReferenceError(f"{source}: expected an object with exactly format and platforms")
    if doc["format"] != FORMAT:
        raise ReferenceError(f"{source}: format: expected {FORMAT!r}, found {doc['format']!r}")
    items = doc["platforms"]
    if not isinstance(items, list) or not items or len(items) > MAX_PLATFORMS:
        raise ReferenceError(f"{source}: platforms: expected a list of 1..{MAX_PLATFORMS} entries")
    platforms = tuple(_platform(item, f"{source}: platforms[{i}]") for i, item in enumerate(items))
    names = [p.name for p in platforms]
    if len(set(names)) != len(names):
        raise ReferenceError(f"{source}: platforms: two entries share a name")
    return ReferenceValues(platforms, "sha256:" + hashlib.sha256(raw).hexdigest(), source)


def _platform(item: object, where: str) -> Platform:
    if not isinstance(item, dict):
        raise ReferenceError(f"{where}: expected an object")
    unknown = set(item) - _ENTRY
    if unknown:
        raise ReferenceError(f"{where}: unknown field {sorted(unknown)[0]!r}; expected {sorted(_ENTRY)}")
    name, kind = item.get("name"), item.get("type")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise ReferenceError(f"{where}.name: expected 1-64 characters, found {name!r}")
    if kind not in CLAIMS:
        raise ReferenceError(f"{where}.type: expected one of {sorted(CLAIMS)}, found {kind!r}")
    values = _values(item.get("values"), kind, f"{where}.values")
    missing = [c for c in REQUIRED[kind] if c not in values]
    if missing:
        raise ReferenceError(f"{where}.values: a {kind} entry must pin {', '.join(missing)}")
    from attestation.tdx.collateral import TCB_STATUSES

    statuses = item.get("tcb_status", ["UpToDate"])
    if "tcb_status" in item and kind != "tdx":
        raise ReferenceError(f"{where}.tcb_status: only tdx entries take a TCB status")
    if (
        not isinstance(statuses, list)
        or not statuses
        or not all(isinstance(x, str) and x in TCB_STATUSES for x in statuses)
    ):
        raise ReferenceError(f"{where}.tcb_status: expected a list of {sorted(TCB_STATUSES)}")
    min_tcb = item.get("min_tcb", {})
    if "min_tcb" in item and kind != "sev-snp":
        raise ReferenceError(f"{where}.min_tcb: only sev-snp entries take a minimum TCB")
    if not isinstance(min_tcb, dict) or not all(
        k in SNP_TCB and type(v) is int and 0 <= v <= 255 for k, v in min_tcb.items()
    ):
        raise ReferenceError(f"{where}.min_tcb: expected {{component: 0..255}} for {', '.join(SNP_TCB)}")
    return Platform(name, kind, values, tuple(statuses), dict(min_tcb))


def _values(obj: object, kind: str, where: str) -> dict[str, frozenset[str | int]]:
    if not isinstance(obj, dict):
        raise ReferenceError(f"{where}: expected an object of claim -> list of accepted values")
    out: dict[str, frozenset[str | int]] = {}
    for claim, accepted in obj.items():
        form = CLAIMS[kind].get(claim)
        if form is None:
            raise ReferenceError(f"{where}: unknown {kind} claim {claim!r}; expected {sorted(CLAIMS[kind])}")
        if not isinstance(accepted, list) or not 0 < len(accepted) <= MAX_VALUES:
            raise ReferenceError(f"{where}.{claim}: expected a list of 1..{MAX_VALUES} accepted values")
        out[claim] = frozenset(_value(v, form, f"{where}.{claim}") for v in accepted)
    return out


def _value(value: object, form: str, where: str) -> str | int:
    if form == "int":
        if type(value) is not int:
            raise ReferenceError(f"{where}: expected integers, found {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise ReferenceError(f"{where}: expected non-empty strings, found {value!r}")
    if form == "hex":
        try:
            bytes.fromhex(value)
        except ValueError:
            raise ReferenceError(f"{where}: expected hex strings, found {value!r}") from None
        return value.lower()
    return value


def load_reference(path: Any) -> ReferenceValues:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_REFERENCE_BYTES + 1)
    except OSError as exc:
        raise ReferenceError(f"{path}: cannot read reference values: {exc.strerror}") from None
    return parse_reference(raw, str(path))


def reference_document(platforms: Sequence[Mapping[str, Any]]) -> bytes:
    """A reference-values document (as `demo` writes one), checked by the parser."""
    raw = (json.dumps({"format": FORMAT, "platforms": list(platforms)}, indent=2) + "\n").encode()
    parse_reference(raw, "generated reference values")
    return raw


def platform_entry(name: str, result: Result) -> dict[str, Any]:
    """The reference entry that pins exactly the verified `result` (for images one trusts)."""
    values: dict[str, list[str | int]] = {}
    for name, form in CLAIMS[result.type].items():
        found = claim(result.claims, name)
        if isinstance(found, list):
            found = found[0] if found else None
        if (form == "int" and type(found) is int) or (form != "int" and isinstance(found, str) and found):
            values[name] = [found]
    return {"name": name, "type": result.type, "values": values}


# --- appraisal --------------------------------------------------------------------------------

MISSING = object()


def claim(claims: Mapping[str, Any], dotted: str) -> Any:
    """A claim by dotted name ("policy.debug" reaches into nested claims), MISSING if absent;
    "rims.tag_id" is the list of every RIM's tag_id."""
    if dotted == "rims.tag_id":
        rims = claims.get("rims")
        return [r.get("tag_id") for r in rims if isinstance(r, dict)] if isinstance(rims, list) else MISSING
    node: Any = claims
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def _holds(found: Any, accepted: frozenset[str | int]) -> bool:
    if isinstance(found, list):
        return any(_holds(f, accepted) for f in found)
    if isinstance(found, bool):
        return False
    if isinstance(found, str):
        return found.lower() in accepted or found in accepted
    return isinstance(found, int) and found in accepted


def _differences(result: Result, platform: Platform) -> list[str]:
    out = []
    for name, accepted in sorted(platform.values.items()):
        found = claim(result.claims, name)
        if not _holds(found, accepted):
            shown = "(absent)" if found is MISSING else str(found)
            out.append(f"{name} {shown[:24]}{'…' if len(shown) > 24 else ''} is not one of {len(accepted)}")
    return out


def is_debug(result: Result) -> bool | None:
    """Whether the evidence is from a debug TEE (memory readable by the host); None if unknown."""
    if result.type == "sev-snp":
        found = claim(result.claims, "policy.debug")
    else:
        found = result.claims.get("debug", False if result.type in ("nvidia", "mock-gpu") else MISSING)
    return found if isinstance(found, bool) else None


def appraise(result: Result, appraisal: Appraisal) -> tuple[Check, ...]:
    """The appraisal checks of one verified evidence: reference, debug, tcb."""
    platforms = appraisal.reference.for_type(result.type) if appraisal.reference else ()
    matched = next((p for p in platforms if not _differences(result, p)), None)
    checks = [_reference_check(result, appraisal, platforms, matched), _debug_check(result, appraisal)]
    if not result.is_mock:
        checks.append(_tcb_check(result, matched))
    return tuple(checks)


def _reference_check(
    result: Result, appraisal: Appraisal, platforms: tuple[Platform, ...], matched: Platform | None
) -> Check:
    kind = result.type
    if matched is not None:
        return Check("reference", True, f"matches platform {matched.name!r} of {appraisal.reference.source}")  # type: ignore[union-attr]
    if platforms:
        first = platforms[0]
        why = "; ".join(_differences(result, first))
        more = f" (and {len(platforms) - 1} other {kind} entries)" if len(platforms) > 1 else ""
        return Check("reference", False, f"matches no {kind} platform: {first.name!r}: {why}{more}")
    unpinned = ", ".join(REQUIRED.get(kind, ("measurements",)))
    if appraisal.any_image:
        return Check("reference", True, f"ANY IMAGE ACCEPTED (--any-image): {unpinned} not compared")
    where = (
        f"{appraisal.reference.source} has no {kind} entry" if appraisal.reference else "no reference values"
    )
    return Check(
        "reference", False, f"{kind} {unpinned} unpinned ({where}); give --reference FILE, or --any-image"
    )


def _debug_check(result: Result, appraisal: Appraisal) -> Check:
    debug = is_debug(result)
    if debug is False:
        return Check("debug", True, "not a debug TEE")
    if debug is True and appraisal.allow_debug:
        return Check("debug", True, "DEBUG TEE accepted (--allow-debug): the host can read its memory")
    if debug is True:
        return Check(
            "debug", False, "a debug TEE: the host can read its memory; refused unless --allow-debug"
        )
    return Check("debug", False, "the debug attribute is unknown")


def _tcb_check(result: Result, matched: Platform | None) -> Check:
    kind = result.type
    if kind == "tdx":
        status = result.tcb_status
        if status is None:
            return Check("tcb", False, "TCB not evaluated: give the Intel collateral (--collateral DIR)")
        if matched is None:  # the verifier judged the status against its own accepted list
            return Check("tcb", True, f"TCB {status}, evaluated by the verifier")
        ok = status in matched.tcb_status
        wanted = ", ".join(matched.tcb_status)
        return Check("tcb", ok, f"TCB {status}" + ("" if ok else f", expected one of {wanted}"))
    if kind == "sev-snp":
        return _snp_tcb(result, matched)
    if kind in ("nvidia", "mock-gpu"):
        status = result.claims.get("rim_status")
        ok = status == "matched"
        return Check(
            "tcb", ok, "measurements match the signed RIMs" if ok else f"RIMs {status or 'not compared'}"
        )
    return Check("tcb", False, f"no TCB evaluation for evidence type {kind!r}")


def _snp_tcb(result: Result, matched: Platform | None) -> Check:
    minimum = dict(matched.min_tcb) if matched else {}
    if not minimum:
        passed = [c for c in result.checks if c.name == "min_tcb" and c.passed]
        if passed:
            return Check("tcb", True, passed[0].detail)
        return Check("tcb", False, "TCB not evaluated: the reference values pin no min_tcb")
    reported = claim(result.claims, "reported_tcb")
    if not isinstance(reported, Mapping):
        return Check("tcb", False, "TCB not evaluated: the report carries no reported_tcb")
    short = [
        f"{name} {reported.get(name)} < {want}"
        for name, want in sorted(minimum.items())
        if not isinstance(reported.get(name), int) or reported[name] < want
    ]
    detail = "; ".join(short) or "reported TCB reaches " + " ".join(f"{k}={v}" for k, v in minimum.items())
    return Check("tcb", not short, detail)


def appraised(result: Result, appraisal: Appraisal) -> Result:
    """`result` with the appraisal checks added (named appraisal_*), so `ok` covers both."""
    from dataclasses import replace

    extra = tuple(Check(f"appraisal_{c.name}", c.passed, c.detail) for c in appraise(result, appraisal))
    return replace(result, checks=result.checks + extra)
