"""The approved list: which engine, datasets and config may run, on which TEE, with which flags.

A JSON document, identified by the SHA-256 of its exact bytes (what parties sign). Parsing is
strict: unknown or duplicate fields, bad names and bad digests are refused with the field named.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from certs import jsonlimits
from loader.digest import format_digest, parse_digest
from loader.errors import PolicyError

MAX_POLICY_BYTES = 1 << 20
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FLAGS = {"allow_debug": False, "require_gpu": False}
_TOP = {"version", "order", "engine", "datasets", "config", "tee", "flags"}
_REQUIRED = {"version", "engine", "datasets", "tee"}


@dataclass(frozen=True)
class ApprovedInput:
    role: str
    name: str
    digest: str


@dataclass(frozen=True)
class ApprovedList:
    raw: bytes
    digest: str
    order: str
    inputs: tuple[ApprovedInput, ...]
    tee: tuple[str, ...]
    flags: dict[str, bool]

    def find(self, role: str, name: str) -> ApprovedInput | None:
        """The approved entry for an input: by role for the engine and config, by name for datasets."""
        return next(
            (i for i in self.inputs if i.role == role and (role != "dataset" or i.name == name)), None
        )


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def _entry(obj: object, role: str, where: str) -> ApprovedInput:
    if not isinstance(obj, dict):
        raise PolicyError(f"{where}: expected an object with name and digest")
    extra = set(obj) - {"name", "digest"}
    if extra:
        raise PolicyError(f"{where}: unknown field {sorted(extra)[0]!r}")
    name = obj.get("name")
    if not valid_name(name):
        raise PolicyError(f"{where}.name: expected 1-64 of [A-Za-z0-9._-], found {name!r}")
    try:
        digest = parse_digest(obj.get("digest"), f"{where}.digest")
    except Exception as exc:
        raise PolicyError(str(exc)) from exc
    return ApprovedInput(role, str(name), digest)


def parse_policy(raw: bytes, source: str) -> ApprovedList:
    """Parse approved-list bytes; errors are prefixed with `source` and name the field."""
    try:
        return _parse(raw)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def _parse(raw: bytes) -> ApprovedList:
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"{len(raw)} bytes, more than the {MAX_POLICY_BYTES} allowed")
    try:
        doc = jsonlimits.loads(raw.decode("utf-8"))
    except jsonlimits.JsonDuplicateKey as exc:
        raise PolicyError(str(exc)) from exc
    except (UnicodeDecodeError, json.JSONDecodeError, jsonlimits.JsonTooDeep) as exc:
        raise PolicyError(f"not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise PolicyError("expected a JSON object at the top level")
    unknown = set(doc) - _TOP
    if unknown:
        raise PolicyError(f"unknown field {sorted(unknown)[0]!r}; expected {sorted(_TOP)}")
    missing = _REQUIRED - set(doc)
    if missing:
        raise PolicyError(f"missing field {sorted(missing)[0]!r}")
    if doc["version"] != 1:
        raise PolicyError(f"version: expected 1, found {doc['version']!r}")
    inputs = [_entry(doc["engine"], "engine", "engine")]
    datasets = doc["datasets"]
    if not isinstance(datasets, list):
        raise PolicyError("datasets: expected a list")
    inputs += [_entry(d, "dataset", f"datasets[{i}]") for i, d in enumerate(datasets)]
    if "config" in doc:
        inputs.append(_entry(doc["config"], "config", "config"))
    names = [(i.role, i.name) for i in inputs]
    if len(set(names)) != len(names):
        raise PolicyError("datasets: two entries share a name")
    return ApprovedList(
        raw=raw,
        digest=format_digest(hashlib.sha256(raw).digest()),
        order=_order(doc.get("order", "")),
        inputs=tuple(inputs),
        tee=_tee(doc["tee"]),
        flags=_flags(doc.get("flags", {})),
    )


def _order(value: object) -> str:
    if value != "" and not valid_name(value):
        raise PolicyError(f"order: expected 1-64 of [A-Za-z0-9._-], found {value!r}")
    return str(value)


def _tee(value: object) -> tuple[str, ...]:
    from attestation import TEE_TYPES

    if not isinstance(value, list) or not value:
        raise PolicyError("tee: expected a non-empty list of TEE types")
    for item in value:
        if item not in TEE_TYPES:
            raise PolicyError(f"tee: unknown TEE type {item!r}; expected one of {list(TEE_TYPES)}")
    return tuple(value)


def _flags(value: object) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise PolicyError("flags: expected an object")
    unknown = set(value) - set(FLAGS)
    if unknown:
        raise PolicyError(f"flags: unknown flag {sorted(unknown)[0]!r}; expected {sorted(FLAGS)}")
    for key, flag in value.items():
        if not isinstance(flag, bool):
            raise PolicyError(f"flags.{key}: expected true or false, found {flag!r}")
    return {**FLAGS, **value}


def load_policy(path: Path) -> ApprovedList:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read approved list: {exc.strerror}") from exc
    return parse_policy(raw, str(path))
