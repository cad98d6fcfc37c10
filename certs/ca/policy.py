"""The CA's issuance policy: a TOML file, unknown keys rejected, validated once at load.

Verification (signatures, chains, collateral, the key binding) is the verifiers' and the
issuer's job; this module only validates verified claims. Fail closed (docs/appraisal.md): a
policy loads only when `[attestation]` pins reference values (`reference = FILE`, appraised by
attestation/reference.py like every verifier) or says `any_image = true`; a CA that would
certify any image by omission does not start. Every evidence is appraised (reference, debug,
TCB), must be from before any RTMR3 extension (the boundary), and then meets the per-type
`[tee.*]` tables, which are extra constraints on top (exact claims, minimums, TCB statuses)
and the verifiers' trust settings (roots, collateral, options).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestation import rtmr
from attestation.evidence import Result, Trust
from attestation.reference import (
    MISSING,
    Appraisal,
    ReferenceError,
    ReferenceValues,
    appraise,
    claim,
    load_reference,
)
from certs.errors import CertsError

MOCK_TYPES = frozenset({"mock", "mock-gpu"})
GPU_TYPES = frozenset({"nvidia", "mock-gpu"})
KNOWN_TYPES = frozenset({"tdx", "sev-snp", "nvidia", "mock", "mock-gpu"})
MAX_POLICY_BYTES = 1 << 20
REFERENCE_FILE = "reference.json"

_TOP = {"issuance", "attestation", "tee"}
_ISSUANCE = {"validity_seconds", "serial_bits", "nonce_ttl_seconds", "max_request_bytes", "subject_prefix"}
_ATTESTATION = {"allow_mock", "allowed_types", "required_types", "reference", "any_image", "allow_debug"}
RTMR3_TYPES = frozenset({"tdx", "mock"})
"""Evidence types with a runtime register the loader extends (TDX RTMR3, the mock's)."""
_TEE = {"measurements", "tcb_status", "minimum", "equals", "roots", "collateral", "options"}


class PolicyError(CertsError):
    """The policy file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class TeePolicy:
    """Extra constraints for one evidence type, on top of the appraisal, and its trust settings."""

    measurements: Mapping[str, frozenset[str]] = field(default_factory=dict)
    tcb_status: tuple[str, ...] = ()
    minimum: Mapping[str, int] = field(default_factory=dict)
    equals: Mapping[str, bool | int | str] = field(default_factory=dict)
    roots: Mapping[str, bytes] = field(default_factory=dict)
    collateral: Mapping[str, bytes] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaPolicy:
    allow_mock: bool = False
    allowed_types: frozenset[str] = frozenset()
    required_types: frozenset[str] = frozenset()
    validity_seconds: int = 3600
    serial_bits: int = 128
    nonce_ttl_seconds: int = 120
    max_request_bytes: int = 4 << 20
    subject_prefix: str = "trusted-loader CVM"
    tee: Mapping[str, TeePolicy] = field(default_factory=dict)
    reference: ReferenceValues | None = None
    """[attestation] reference: reference values (attestation/reference.py, the format every
    verifier uses); every evidence is appraised with the one appraisal module."""
    any_image: bool = False
    """[attestation] any_image: no reference values, deliberately; recorded in every certificate."""
    allow_debug: bool = False
    digest: str = ""
    """sha256:<hex> of the policy file's bytes, recorded in every certificate."""

    def trust_for(self, evidence_type: str) -> Trust:
        tee = self.tee.get(evidence_type, TeePolicy())
        return Trust(
            allow_mock=self.allow_mock,
            roots=dict(tee.roots),
            collateral=dict(tee.collateral),
            options=dict(tee.options),
        )

    @property
    def appraisal(self) -> Appraisal:
        return Appraisal(self.reference, any_image=self.any_image, allow_debug=self.allow_debug)

    def warnings(self) -> list[str]:
        """Weak spots an operator should see when the CA starts."""
        out = []
        if self.any_image:
            out.append(
                "policy: any_image = true; ANY IMAGE ACCEPTED: no reference values pin the platform "
                "(every certificate records it)"
            )
        if self.reference is not None:
            for kind in sorted(self.allowed_types):
                if not self.reference.for_type(kind):
                    out.append(
                        f"policy: {self.reference.source} has no {kind} entry; {kind} evidence is refused"
                    )
        if self.allow_debug:
            out.append("policy: allow_debug = true; DEBUG TEEs are accepted: the host can read their memory")
        if self.allow_mock:
            out.append("policy: allow_mock = true; software mock evidence is accepted (tests and demos only)")
        return out

    def validate(self, kind: str, result: Result) -> list[str]:
        """Reasons `result` (verified evidence of type `kind`) falls outside this policy."""
        if kind not in self.allowed_types:
            return [f"evidence type {kind!r} is not allowed by the CA policy"]
        if result.is_mock and not self.allow_mock:
            return [f"{kind}: mock evidence is not allowed by the CA policy"]
        tee = self.tee[kind]
        reasons = [f"{kind}: {c.name}: {c.detail}" for c in appraise(result, self.appraisal) if not c.passed]
        if (why := _after_boot(kind, result)) is not None:
            reasons.append(f"{kind}: rtmr3: {why}")
        for name, allowed in sorted(tee.measurements.items()):
            value = claim(result.claims, name)
            if not isinstance(value, str) or value.lower() not in allowed:
                reasons.append(f"{kind}: {name} {_show(value)} is not one of the {len(allowed)} expected")
        if tee.tcb_status and result.tcb_status not in tee.tcb_status:
            reasons.append(
                f"{kind}: TCB status {result.tcb_status!r} is not one of {', '.join(tee.tcb_status)}"
            )
        for name, minimum in sorted(tee.minimum.items()):
            value = claim(result.claims, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                reasons.append(f"{kind}: {name} is {_show(value)}, expected at least {minimum}")
        for name, expected in sorted(tee.equals.items()):
            value = claim(result.claims, name)
            if type(value) is not type(expected) or value != expected:
                reasons.append(f"{kind}: {name} is {_show(value)}, expected {expected!r}")
        return reasons


def _after_boot(kind: str, result: Result) -> str | None:
    """Why evidence of `kind` is not from before the loader's first RTMR3 extension, or None.

    The loader collects the evidence it enrolls with before it extends RTMR3 and refuses to go
    on unless RTMR3 then holds its boot value, zero (loader/boot/sequence.py,
    loader/report/boundary.py); the CA sees no event log, so any other value means something
    (a workload start) was extended: that evidence speaks for whatever ran, not for the loader.
    """
    if kind not in RTMR3_TYPES:
        return None
    value = claim(result.claims, "rtmr3")
    if not isinstance(value, str):
        return f"expected the register in the verified claims, found {_show(value)}"
    if value.lower() == bytes(rtmr.RTMR_LEN).hex():
        return None
    return (
        f"RTMR3 is {value[:16]}…, not its boot value (zero): the evidence was made after something "
        "was extended (a workload start), so it speaks for that, not for the loader"
    )


def _show(value: Any) -> str:
    if value is MISSING:
        return "(absent)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def load_policy(path: Path) -> CaPolicy:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read policy: {exc.strerror or exc}") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: policy is {len(raw)} bytes, more than {MAX_POLICY_BYTES}")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc})") from exc
    return parse_policy(doc, base=path.parent, digest="sha256:" + hashlib.sha256(raw).hexdigest(), src=path)


def parse_policy(doc: Mapping[str, Any], *, base: Path, digest: str, src: Path | str = "policy") -> CaPolicy:
    p = _Reader(str(src))
    p.keys(doc, _TOP, "")
    iss = p.table(doc, "issuance", _ISSUANCE)
    issuance = {
        "validity_seconds": p.bounded(iss, "validity_seconds", 60, 90 * 86400, 3600),
        "serial_bits": p.bounded(iss, "serial_bits", 64, 159, 128),
        "nonce_ttl_seconds": p.bounded(iss, "nonce_ttl_seconds", 5, 3600, 120),
        "max_request_bytes": p.bounded(iss, "max_request_bytes", 16 << 10, 64 << 20, 4 << 20),
    }
    prefix = p.typed(iss, "subject_prefix", str, "issuance", "trusted-loader CVM")
    if not 0 < len(prefix) <= 30:
        raise PolicyError(f"{src}: issuance.subject_prefix: expected 1..30 characters, found {len(prefix)}")
    issuance["subject_prefix"] = prefix
    att = p.table(doc, "attestation", _ATTESTATION)
    allow_mock = p.typed(att, "allow_mock", bool, "attestation", False)
    allowed = frozenset(p.names(att, "allowed_types", "attestation"))
    required = frozenset(p.names(att, "required_types", "attestation", required=False))
    if not allowed:
        raise PolicyError(f"{src}: attestation.allowed_types: expected at least one evidence type")
    if not required <= allowed:
        raise PolicyError(f"{src}: attestation.required_types lists types not in allowed_types")
    if not allow_mock and allowed & MOCK_TYPES:
        raise PolicyError(f"{src}: attestation.allowed_types lists a mock type but allow_mock is false")
    if not allowed - GPU_TYPES:
        raise PolicyError(f"{src}: attestation.allowed_types: expected at least one CPU TEE type")
    reference = _reference(p.typed(att, "reference", str, "attestation", None), base, src)
    any_image = p.typed(att, "any_image", bool, "attestation", False)
    allow_debug = p.typed(att, "allow_debug", bool, "attestation", False)
    tees_doc = p.typed(doc, "tee", dict, "", {})
    p.keys(tees_doc, allowed, "tee")
    missing = sorted(allowed - set(tees_doc))
    if missing:
        raise PolicyError(f"{src}: every allowed type needs a [tee.<type>] section; missing {missing}")
    tees = {kind: p.tee(tees_doc[kind], kind, base) for kind in sorted(allowed)}
    _pins_or_says_any(reference, any_image, src)
    return CaPolicy(
        allow_mock=allow_mock,
        allowed_types=allowed,
        required_types=required,
        tee=tees,
        reference=reference,
        any_image=any_image,
        allow_debug=allow_debug,
        digest=digest,
        **issuance,
    )


def _pins_or_says_any(reference: ReferenceValues | None, any_image: bool, src: Path | str) -> None:
    """Fail closed: no CA certifies any image by omission."""
    if reference is None and not any_image:
        raise PolicyError(
            f"{src}: attestation: expected reference = FILE (reference values pinning your images, "
            "docs/appraisal.md) or any_image = true; found neither, and the CA does not certify "
            "any image by omission"
        )
    if reference is not None and any_image:
        raise PolicyError(f"{src}: attestation: reference and any_image = true exclude each other")


def _reference(path: str | None, base: Path, src: Path | str) -> ReferenceValues | None:
    if path is None:
        return None
    try:
        return load_reference(base / path)
    except ReferenceError as exc:
        raise PolicyError(f"{src}: attestation.reference: {exc}") from exc


class _Reader:
    """Typed access to the TOML document with one-line errors naming file and key."""

    def __init__(self, src: str) -> None:
        self.src = src

    def err(self, where: str, msg: str) -> PolicyError:
        return PolicyError(f"{self.src}: {where}: {msg}")

    def keys(self, table: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.err(
                where or "top level", f"unknown keys {unknown}; expected some of {sorted(allowed)}"
            )

    def table(self, doc: Mapping[str, Any], name: str, allowed: set[str]) -> Mapping[str, Any]:
        value = self.typed(doc, name, dict, "", {})
        self.keys(value, allowed, name)
        return value

    def typed(self, table: Mapping[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            found = type(value).__name__
            raise self.err(f"{where}.{key}".lstrip("."), f"expected {kind.__name__}, found {found}")
        return value

    def bounded(self, table: Mapping[str, Any], key: str, lo: int, hi: int, default: int) -> int:
        value: int = self.typed(table, key, int, "issuance", default)
        if not lo <= value <= hi:
            raise self.err(f"issuance.{key}", f"expected {lo}..{hi}, found {value}")
        return value

    def names(self, table: Mapping[str, Any], key: str, where: str, required: bool = True) -> list[str]:
        if key not in table and required:
            raise self.err(f"{where}.{key}", "missing")
        values = self.typed(table, key, list, where, [])
        for v in values:
            if v not in KNOWN_TYPES:
                raise self.err(f"{where}.{key}", f"unknown evidence type {v!r}; known: {sorted(KNOWN_TYPES)}")
        return values

    def tee(self, doc: Any, kind: str, base: Path) -> TeePolicy:
        where = f"tee.{kind}"
        if not isinstance(doc, dict):
            raise self.err(where, f"expected a table, found {type(doc).__name__}")
        self.keys(doc, _TEE, where)
        if "measurements" not in doc:
            raise self.err(where, "missing measurements (use measurements = {} to pin none, deliberately)")
        meas = self.typed(doc, "measurements", dict, where, {})
        pinned = {}
        for name, values in meas.items():
            if not isinstance(values, list) or not values or not all(_is_hex(v) for v in values):
                raise self.err(f"{where}.measurements.{name}", "expected a non-empty list of hex strings")
            pinned[name] = frozenset(v.lower() for v in values)
        statuses = self.typed(doc, "tcb_status", list, where, [])
        if not all(isinstance(s, str) for s in statuses):
            raise self.err(f"{where}.tcb_status", "expected a list of strings")
        minimum = self.typed(doc, "minimum", dict, where, {})
        for name, value in minimum.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.err(f"{where}.minimum.{name}", f"expected an integer, found {value!r}")
        equals = self.typed(doc, "equals", dict, where, {})
        for name, value in equals.items():
            if not isinstance(value, bool | int | str):
                raise self.err(
                    f"{where}.equals.{name}", f"expected a bool, integer or string, found {value!r}"
                )
        return TeePolicy(
            measurements=pinned,
            tcb_status=tuple(statuses),
            minimum=dict(minimum),
            equals=dict(equals),
            roots=self.files(doc, "roots", where, base),
            collateral=self.files(doc, "collateral", where, base),
            options=dict(self.typed(doc, "options", dict, where, {})),
        )

    def files(self, doc: Mapping[str, Any], key: str, where: str, base: Path) -> dict[str, bytes]:
        out = {}
        for name, rel in self.typed(doc, key, dict, where, {}).items():
            if not isinstance(rel, str):
                raise self.err(f"{where}.{key}.{name}", "expected a file path")
            path = base / rel
            try:
                if path.stat().st_size > MAX_POLICY_BYTES * 16:
                    raise self.err(f"{where}.{key}.{name}", f"{path} is too large")
                out[name] = path.read_bytes()
            except OSError as exc:
                raise self.err(f"{where}.{key}.{name}", f"cannot read {path}: {exc.strerror or exc}") from exc
        return out


def _is_hex(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) % 2:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def default_policy_text(*, allow_mock: bool) -> str:
    """The policy `ca init` writes: strict for hardware, mock only when asked for."""
    from attestation.mock.attester import MOCK_MRTD

    types = ["tdx", "sev-snp", "nvidia"] + (["mock", "mock-gpu"] if allow_mock else [])
    reference_line = (
        f'\nreference = "{REFERENCE_FILE}"   # reference values (docs/appraisal.md): what platforms must be'
        if allow_mock
        else f'\n# reference = "{REFERENCE_FILE}"   # EDIT: pin your images (docs/appraisal.md)'
        "\n# any_image = true   # or accept any image, deliberately (recorded in every certificate)"
        "\n# The CA does not start until one of the two lines above is set."
    )
    mock_sections = ""
    if allow_mock:
        mock_sections = f"""
[tee.mock]
# The software TEE: anyone can forge it. For tests and demos only.
measurements = {{ mrtd = ["{MOCK_MRTD.hex()}"] }}
equals = {{ debug = false }}

[tee.mock-gpu]
measurements = {{}}
"""
    return f"""# trusted-loader CA policy. Unknown keys are rejected; restart `ca serve` after editing.

[issuance]
validity_seconds = 3600      # lifetime of an issued CVM certificate
serial_bits = 128            # random serial numbers of this many bits (64..159)
nonce_ttl_seconds = 120      # how long a nonce from GET /v1/nonce stays redeemable
max_request_bytes = 4194304  # POST /v1/certificates body limit

[attestation]
allow_mock = {"true" if allow_mock else "false"}{reference_line}
allowed_types = {types!r}
required_types = []          # e.g. ["nvidia"] to insist on GPU evidence
# Each allowed type needs a [tee.<type>] section. Claim names are those the verifier reports
# (`trusted-loader evidence verify --json`); dotted names reach into nested claims.
# measurements: claim -> list of accepted hex values. EDIT: pin your images' values.

[tee.tdx]
measurements = {{}}          # e.g. {{ mrtd = ["..."], rtmr0 = ["..."], rtmr1 = ["..."] }}
tcb_status = ["UpToDate"]    # needs Intel collateral, refreshed before its nextUpdate:
equals = {{ debug = false }}
# collateral = {{ "tcb_info.json" = "intel/tcb_info.json",
#                "tcb_info_issuer_chain.pem" = "intel/tcb_chain.pem",
#                "qe_identity.json" = "intel/qe_identity.json",
#                "qe_identity_issuer_chain.pem" = "intel/tcb_chain.pem",
#                "pck_crl.der" = "intel/pck_crl.der", "root_ca_crl.der" = "intel/root_ca_crl.der" }}
# options = {{ require_collateral = true, require_crl = true }}   (paths relative to this file)

[tee.sev-snp]
measurements = {{}}          # e.g. {{ measurement = ["..."] }}
equals = {{ "policy.debug" = false }}
# minimum = {{ "reported_tcb.bootloader" = 3, "reported_tcb.snp" = 8, "reported_tcb.microcode" = 115 }}
# collateral = {{ crl = "amd/ark_crl.der" }}

[tee.nvidia]
measurements = {{}}
{mock_sections}""".replace("'", '"')
