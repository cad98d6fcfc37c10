"""The approved list: which engine, datasets and config may run, how, on which TEE, with which
flags, and to whom the output goes. What is not in it, the parties did not consent to.

A JSON document, identified by the SHA-256 of its exact bytes (what parties sign). Parsing is
strict: unknown or duplicate fields, bad names and bad digests are refused with the field named.
Version 2 (docs/consent.md); version 1 lists, which named neither kinds nor how the engine runs,
are refused:
  {"version": 2, "order": "...",
   "engine": {"name", "kind": "file"|"directory"|"oci", "digest"}, "datasets": [...], "config": {...},
   "run": {"runtime": "process"|"oci", "command": [argv template], "env": {NAME: VALUE},
           "network": "none"|"host"|NAME, "timeout": seconds, "platform": OS/ARCH or null,
           "isolation": "namespaces" (default) | "none"},
   "output": {"recipient": "sha256:<SHA-256 of the recipient key's SubjectPublicKeyInfo>" | null},
   "tee": [...], "flags": {...}}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from certs import jsonlimits
from loader.errors import PolicyError
from loader.measure.digest import format_digest, parse_digest

MAX_POLICY_BYTES = 1 << 20
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FLAGS = {"allow_debug": False, "require_gpu": False}
_TOP = {"version", "order", "engine", "datasets", "config", "tee", "flags", "run", "output"}
_REQUIRED = {"version", "engine", "datasets", "tee", "run", "output"}
VERSION = 2
KINDS = ("file", "directory", "oci")
_RUN = {"runtime", "command", "env", "network", "timeout", "platform", "isolation"}
_RUN_OPTIONAL = {"platform", "isolation"}
ISOLATIONS = ("namespaces", "none")
MAX_TIMEOUT = 7 * 86400


@dataclass(frozen=True)
class ApprovedInput:
    role: str
    name: str
    digest: str
    kind: str = "file"


@dataclass(frozen=True)
class Execution:
    """How the engine runs and where its output goes: approved (list) or configured (loader).

    The same shape on both sides, so the comparison is field by field (loader/report/decide.py) and
    the report records the configured one for `report verify` to compare again."""

    runtime: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    network: str
    timeout_ms: int
    platform: str | None
    recipient: str | None
    isolation: str = "namespaces"
    """"none" only where the parties consented to an uncontained engine (it could then take the
    loader's key and sign what it likes: docs/containment.md)."""

    def to_record(self) -> dict[str, object]:
        return {
            "runtime": self.runtime,
            "command": list(self.command),
            "env": dict(self.env),
            "network": self.network,
            "timeout_ms": self.timeout_ms,
            "platform": self.platform,
            "recipient": self.recipient,
            "isolation": self.isolation,
        }


@dataclass(frozen=True)
class ApprovedList:
    raw: bytes
    digest: str
    order: str
    inputs: tuple[ApprovedInput, ...]
    tee: tuple[str, ...]
    flags: dict[str, bool]
    execution: Execution

    def find(self, role: str, name: str) -> ApprovedInput | None:
        """The approved entry for an input: by role for the engine and config, by name for datasets."""
        return next(
            (i for i in self.inputs if i.role == role and (role != "dataset" or i.name == name)), None
        )


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def _entry(obj: object, role: str, where: str) -> ApprovedInput:
    if not isinstance(obj, dict):
        raise PolicyError(f"{where}: expected an object with name, kind and digest")
    extra = set(obj) - {"name", "kind", "digest"}
    if extra:
        raise PolicyError(f"{where}: unknown field {sorted(extra)[0]!r}")
    kind = obj.get("kind")
    if kind not in KINDS:
        raise PolicyError(f"{where}.kind: expected one of {list(KINDS)}, found {kind!r}")
    name = obj.get("name")
    if not valid_name(name):
        raise PolicyError(f"{where}.name: expected 1-64 of [A-Za-z0-9._-], found {name!r}")
    try:
        digest = parse_digest(obj.get("digest"), f"{where}.digest")
    except Exception as exc:
        raise PolicyError(str(exc)) from exc
    return ApprovedInput(role, str(name), digest, str(kind))


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
    if doc["version"] != VERSION:
        raise PolicyError(
            f"version: expected {VERSION} (kinds, run and output name what the parties consent to), "
            f"found {doc['version']!r}"
        )
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
        execution=_execution(doc["run"], doc["output"]),
    )


def _execution(run: object, output: object) -> Execution:
    if not isinstance(run, dict):
        raise PolicyError("run: expected an object naming runtime, command, env, network, timeout")
    unknown, missing = set(run) - _RUN, _RUN - _RUN_OPTIONAL - set(run)
    if unknown or missing:
        which = sorted(unknown)[0] if unknown else sorted(missing)[0]
        raise PolicyError(
            f"run: {'unknown' if unknown else 'missing'} field {which!r}; expected {sorted(_RUN)}"
        )
    if run["runtime"] not in ("process", "oci"):
        raise PolicyError(f"run.runtime: expected 'process' or 'oci', found {run['runtime']!r}")
    command = run["command"]
    if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
        raise PolicyError("run.command: expected a list of strings (the argv template)")
    env = run["env"]
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise PolicyError("run.env: expected an object of NAME: string value")
    if not isinstance(run["network"], str) or not run["network"]:
        raise PolicyError(f"run.network: expected 'none', 'host' or a network name, found {run['network']!r}")
    timeout = run["timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise PolicyError(f"run.timeout: expected seconds in (0, {MAX_TIMEOUT}], found {timeout!r}")
    platform = run.get("platform")
    if platform is not None and not isinstance(platform, str):
        raise PolicyError(f"run.platform: expected OS/ARCH[/VARIANT] or null, found {platform!r}")
    isolation = run.get("isolation", "namespaces")
    if isolation not in ISOLATIONS:
        raise PolicyError(f"run.isolation: expected one of {list(ISOLATIONS)}, found {isolation!r}")
    return Execution(
        runtime=run["runtime"],
        command=tuple(command),
        env=tuple(sorted(env.items())),
        network=run["network"],
        timeout_ms=round(timeout * 1000),
        platform=platform,
        recipient=_recipient(output),
        isolation=isolation,
    )


def _recipient(output: object) -> str | None:
    if not isinstance(output, dict) or set(output) != {"recipient"}:
        raise PolicyError('output: expected {"recipient": "sha256:<key digest>" or null}')
    value = output["recipient"]
    if value is None:
        return None
    try:
        return parse_digest(value, "output.recipient")
    except Exception as exc:
        raise PolicyError(str(exc)) from exc


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
