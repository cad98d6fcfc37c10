"""Validation of a verified SEV-SNP report against an operator's policy.

Verification (verifier.py) says the report is genuine; validation says it is acceptable.
Fail closed: a guest policy that allows DEBUG (the hypervisor may decrypt guest memory) or a
migration agent (MIGRATE_MA: another VM may export the guest's memory) is refused unless the
policy explicitly allows it, and so is any guest-policy bit this code does not know.
Expected values that are not configured are not checked; the defaults check nothing else.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from attestation.errors import AttestationError
from attestation.evidence import ChecksBuilder
from attestation.sevsnp.products import Product
from attestation.sevsnp.report import AttestationReport
from attestation.sevsnp.tcb import COMPONENTS

TCB_ALIASES = {"bl": "bootloader", "ucode": "microcode"}
_TCB_FIELDS = ("reported_tcb", "current_tcb", "committed_tcb")


class PolicyError(AttestationError):
    """An SnpPolicy given in configuration or on the command line is malformed."""


@dataclass(frozen=True)
class SnpPolicy:
    measurements: tuple[bytes, ...] = ()  # any of these MEASUREMENTs
    host_data: bytes | None = None
    id_key_digests: tuple[bytes, ...] = ()
    author_key_digests: tuple[bytes, ...] = ()
    min_tcb: tuple[tuple[str, int], ...] = ()  # component -> minimum SPL
    vmpl: int | None = None
    min_guest_svn: int | None = None
    signing_key: str | None = None  # "vcek" or "vlek"
    allow_debug: bool = False
    allow_migrate_ma: bool = False

    def __post_init__(self) -> None:
        _sized("measurement", self.measurements, 48)
        _sized("id_key_digest", self.id_key_digests, 48)
        _sized("author_key_digest", self.author_key_digests, 48)
        if self.host_data is not None:
            _sized("host_data", (self.host_data,), 32)
        for name, value in self.min_tcb:
            if name not in COMPONENTS or not 0 <= value <= 0xFF:
                raise PolicyError(
                    f"min_tcb: expected components {', '.join(COMPONENTS)} with SPLs 0..255, "
                    f"found {name}={value}"
                )
        if self.vmpl is not None and not 0 <= self.vmpl <= 3:
            raise PolicyError(f"vmpl: expected 0..3, found {self.vmpl}")
        if self.signing_key not in (None, "vcek", "vlek"):
            raise PolicyError(f"signing_key: expected 'vcek' or 'vlek', found {self.signing_key!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SnpPolicy:
        """From configuration: hex strings (or lists of them), min_tcb a map, flags booleans."""
        known = {
            "measurement",
            "host_data",
            "id_key_digest",
            "author_key_digest",
            "min_tcb",
            "vmpl",
            "min_guest_svn",
            "signing_key",
            "allow_debug",
            "allow_migrate_ma",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"sev-snp policy: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(
            measurements=_hex_list(data, "measurement"),
            host_data=(_hex_list(data, "host_data") or (None,))[0],
            id_key_digests=_hex_list(data, "id_key_digest"),
            author_key_digests=_hex_list(data, "author_key_digest"),
            min_tcb=parse_min_tcb(data.get("min_tcb", {})),
            vmpl=_int_or_none(data, "vmpl"),
            min_guest_svn=_int_or_none(data, "min_guest_svn"),
            signing_key=data.get("signing_key"),
            allow_debug=_bool(data, "allow_debug"),
            allow_migrate_ma=_bool(data, "allow_migrate_ma"),
        )


def parse_min_tcb(value: Mapping[str, Any] | str) -> tuple[tuple[str, int], ...]:
    """From {"bootloader": 2, ...} or "bl=2,tee=0,snp=5,ucode=68"."""
    if isinstance(value, str):
        pairs: list[tuple[str, Any]] = []
        for item in filter(None, (p.strip() for p in value.split(","))):
            name, sep, num = item.partition("=")
            if not sep:
                raise PolicyError(f"min_tcb: expected NAME=SPL, found {item!r}")
            pairs.append((name.strip(), num.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        raise PolicyError(f"min_tcb: expected a map or NAME=SPL list, found {type(value).__name__}")
    out: dict[str, int] = {}
    for name, num in pairs:
        try:
            out[TCB_ALIASES.get(name, name)] = int(num)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"min_tcb: {name} must be an integer, found {num!r}") from exc
    return tuple(out.items())


def _sized(name: str, values: tuple[bytes, ...], size: int) -> None:
    for value in values:
        if len(value) != size:
            raise PolicyError(f"{name}: expected {size} bytes, found {len(value)}")


def _hex_list(data: Mapping[str, Any], key: str) -> tuple[bytes, ...]:
    value = data.get(key, ())
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise PolicyError(f"{key}: expected a hex string or a list of them")
    try:
        return tuple(bytes.fromhex(str(v)) for v in items)
    except ValueError as exc:
        raise PolicyError(f"{key}: not hex ({exc})") from exc


def _int_or_none(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise PolicyError(f"{key}: expected an integer, found {value!r}")
    return value


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise PolicyError(f"{key}: expected true or false, found {value!r}")
    return value


def _one_of(name: str, actual: bytes, allowed: tuple[bytes, ...], checks: ChecksBuilder) -> None:
    if not allowed:
        return
    hit = any(hmac.compare_digest(actual, want) for want in allowed)
    expected = allowed[0].hex() if len(allowed) == 1 else f"one of {len(allowed)} values"
    checks.add(
        name, hit, f"{actual.hex()} is expected" if hit else f"expected {expected}, found {actual.hex()}"
    )


def validate(
    rep: AttestationReport, product: Product | None, policy: SnpPolicy, checks: ChecksBuilder
) -> None:
    """Add one check per policy item to `checks`."""
    pol = rep.policy
    checks.add(
        "policy_debug",
        not pol.debug or policy.allow_debug,
        "guest policy forbids debugging"
        if not pol.debug
        else "guest policy allows DEBUG (hypervisor can decrypt guest memory)"
        + ("; accepted (--allow-debug)" if policy.allow_debug else "; refused unless --allow-debug"),
    )
    checks.add(
        "policy_migrate_ma",
        not pol.migrate_ma or policy.allow_migrate_ma,
        "no migration agent allowed"
        if not pol.migrate_ma
        else "guest policy allows a migration agent (MIGRATE_MA)"
        + (
            "; accepted by allow_migrate_ma"
            if policy.allow_migrate_ma
            else "; refused unless allow_migrate_ma"
        ),
    )
    problems = []
    if not pol.bit("reserved_must_be_one"):
        problems.append("bit 17 (must be one) is zero")
    if pol.unknown_bits:
        problems.append(f"unknown bits set: 0x{pol.unknown_bits:016x}")
    checks.add("policy_bits", not problems, "; ".join(problems) or f"guest policy 0x{pol.raw:016x}")
    _one_of("measurement", rep.measurement, policy.measurements, checks)
    if policy.host_data is not None:
        _one_of("host_data", rep.host_data, (policy.host_data,), checks)
    _one_of("id_key_digest", rep.id_key_digest, policy.id_key_digests, checks)
    _one_of("author_key_digest", rep.author_key_digest, policy.author_key_digests, checks)
    if policy.min_tcb:
        _min_tcb(rep, product, dict(policy.min_tcb), checks)
    if policy.vmpl is not None:
        checks.add("vmpl", rep.vmpl == policy.vmpl, f"expected VMPL {policy.vmpl}, found {rep.vmpl}")
    if policy.min_guest_svn is not None:
        ok = rep.guest_svn >= policy.min_guest_svn
        checks.add("guest_svn", ok, f"GUEST_SVN {rep.guest_svn}, minimum {policy.min_guest_svn}")
    if policy.signing_key is not None:
        ok = rep.signing_key_name == policy.signing_key
        checks.add("signing_key_policy", ok, f"expected {policy.signing_key}, found {rep.signing_key_name}")


def _min_tcb(
    rep: AttestationReport, product: Product | None, minimum: dict[str, int], checks: ChecksBuilder
) -> None:
    if product is None:
        checks.fail("min_tcb", "cannot compare TCB levels: the product is unknown")
        return
    short = [f"{field}: {gap}" for field in _TCB_FIELDS for gap in rep.tcb(field, product).below(minimum)]
    want = " ".join(f"{k}={v}" for k, v in minimum.items())
    checks.add(
        "min_tcb",
        not short,
        "; ".join(short) if short else f"reported, current and committed TCB reach {want}",
    )
