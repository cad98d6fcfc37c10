"""The integrity report: a COSE_Sign1 over a deterministic CBOR map, signed by the ephemeral key.

Payload fields (all keys text, no floats, times as RFC 3339 UTC strings):
  format     "trusted-loader/report/v2"
  loader     {name, version}
  job        {id, order}
  tee        configured TEE type
  key        {alg: "ES384", spki: bstr}          the signer; equals the x5chain leaf's key
  nonce      bstr(32)                            freshness, bound into report_data
  evidence   [{type, data, aux}]                 CPU evidence first, then GPUs
  policy     {digest, document: bstr,            the approved list, byte for byte
              signatures: [{file, cose: bstr}],  the parties' detached COSE_Sign1 envelopes as read
              signers: [{name, key: bstr (SPKI DER), required: bool}]}  the configured trusted signers
  inputs     [{role, name, kind, digest, size, files, expected, ms, encrypted, staging?}]
             staging: "copy" | "move", how the input reached the staging directory
             encrypted: null | {digest, size, grant} for a dataset that arrived encrypted: the
             ciphertext's digest and size and the grant file's digest; `digest` is then the
             plaintext's, or "" when the job aborted before it was decrypted
  run        {runtime, command: [text], env: {text: text}, network, timeout_ms, platform: null|text,
              recipient: null|text, isolation}   how the configuration ran the engine and where its output
              went (sha256 of the recipient key's SPKI); the decision compares it with the list's
  collateral {needed, sets, errors}              the platform's collateral (loader/report/collateral.py)
  events     [{register, event, value: bstr(48)}]  runtime-register extensions, in order; the last
             is "workload-start" when the engine ran (loader.report.boundary)
  rtmr3      null | {initial: bstr(48)}          RTMR3 read before the loader's first extension
             (TDX, mock); null where the TEE has no runtime register (SEV-SNP)
  containment null | {isolation: "namespaces"|"none"|"oci", runner, uid, gid, user_namespace,
             namespaces: [text], network, devices: [text], boundary}  how the engine was
             contained (docs/containment.md); null when no engine started
  decision   {verdict: "run"|"abort", reasons: [text]}
  workload   null | {exit_code, timed_out, ms, error, output}
  hashing    {bytes, ms, rate}                   rate in bytes per second
  wipe       null | {files, overwritten, decrypted, method?, requested?, medium?}
             decrypted: datasets decrypted in staging; method: "overwrite" | "unlink" (used),
             requested: "auto" | "overwrite" | "unlink" (configured), medium: the staging file
             system ("tmpfs", "ext4", "0x<magic>")
  Fields marked ? were added after the first reports: absent in those, present in new ones.
  timestamps {started, measured, decided, finished}
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509

from loader.errors import ReportError
from loader.report import cose
from loader.report.collateral import check_record

FORMAT = "trusted-loader/report/v2"
"""v2 (this release): input kinds, the configured execution (`run`), carried collateral, the RTMR3
boundary and the containment record; v1 reports are refused with this field named."""
CONTENT_TYPE = "application/vnd.trusted-loader.report+cbor"


def input_event(role: str, name: str, digest: str) -> str:
    return f"{role}:{name}={digest}"


def utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def sign_report(payload: dict[str, Any], *, x5chain: list[bytes], sign: Callable[[bytes], bytes]) -> bytes:
    body = cbor2.dumps(payload, canonical=True)
    return cose.encode_sign1(body, x5chain=x5chain, content_type=CONTENT_TYPE, sign=sign)


_TEXT, _BYTES, _INT, _BOOL, _LIST, _MAP = str, bytes, int, bool, list, dict


@dataclass(frozen=True)
class _Added:
    """A field added to the format later: absent in older reports, checked when present."""

    kind: Any


_SCHEMA: dict[str, Any] = {
    "format": _TEXT,
    "loader": {"name": _TEXT, "version": _TEXT},
    "job": {"id": _TEXT, "order": _TEXT},
    "tee": _TEXT,
    "key": {"alg": _TEXT, "spki": _BYTES},
    "nonce": _BYTES,
    "evidence": _LIST,
    "policy": {"digest": _TEXT, "document": _BYTES, "signatures": _LIST, "signers": _LIST},
    "inputs": _LIST,
    "run": {
        "runtime": _TEXT,
        "command": _LIST,
        "env": _MAP,
        "network": _TEXT,
        "timeout_ms": _INT,
        "platform": (type(None), _TEXT),
        "recipient": (type(None), _TEXT),
        "isolation": _TEXT,
    },
    "events": _LIST,
    "collateral": _MAP,
    "rtmr3": (type(None), {"initial": _BYTES}),
    "containment": (
        type(None),
        {
            "isolation": _TEXT,
            "runner": _TEXT,
            "uid": (type(None), _INT),
            "gid": (type(None), _INT),
            "user_namespace": _BOOL,
            "namespaces": _LIST,
            "network": _TEXT,
            "devices": _LIST,
            "boundary": _TEXT,
        },
    ),
    "decision": {"verdict": _TEXT, "reasons": _LIST},
    "workload": (
        type(None),
        {
            "exit_code": (type(None), _INT),
            "timed_out": _BOOL,
            "ms": _INT,
            "error": (type(None), _TEXT),
            "output": (
                type(None),
                {
                    "digest": _TEXT,
                    "size": _INT,
                    "files": _INT,
                    "sealed": (type(None), {"file": _TEXT, "recipient": _TEXT}),
                },
            ),
        },
    ),
    "hashing": {"bytes": _INT, "ms": _INT, "rate": _INT},
    "wipe": (
        type(None),
        {
            "files": _INT,
            "overwritten": _INT,
            "decrypted": _INT,
            "method": _Added(_TEXT),
            "requested": _Added(_TEXT),
            "medium": _Added(_TEXT),
        },
    ),
    "timestamps": {"started": _TEXT, "measured": _TEXT, "decided": _TEXT, "finished": _TEXT},
}
_INPUT = {
    "role": _TEXT,
    "name": _TEXT,
    "kind": _TEXT,
    "digest": _TEXT,
    "size": _INT,
    "files": _INT,
    "expected": (type(None), _TEXT),
    "ms": _INT,
    "encrypted": (type(None), _MAP),
    "staging": _Added(_TEXT),
}
STAGING_MODES = ("copy", "move")
WIPE_METHODS = ("overwrite", "unlink")
_ENCRYPTED = {"digest": _TEXT, "size": _INT, "grant": _TEXT}
_SIGNATURE = {"file": _TEXT, "cose": _BYTES}
_SIGNER = {"name": _TEXT, "key": _BYTES, "required": _BOOL}
_EVENT = {"register": _TEXT, "event": _TEXT, "value": _BYTES}


INT_RANGE = range(-(2**63), 2**64)
"""Integers a report may hold (CBOR's native range); bignums are refused."""


def _check_value(value: object, kind: Any, path: str) -> None:
    """`kind`: a type, a schema map, or a tuple of alternatives (None and one type or map)."""
    if isinstance(kind, dict):
        _check_map(value, kind, path)
        return
    if isinstance(kind, tuple):
        if value is not None:
            _check_value(value, next(k for k in kind if k is not type(None)), path)
        return
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not _BOOL):
        raise ReportError(f"report payload: {path}: wrong type {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and value not in INT_RANGE:
        raise ReportError(f"report payload: {path}: integer out of range")


def _check_map(obj: object, schema: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise ReportError(f"report payload: {where or 'top level'}: expected a map")
    required = {k for k, kind in schema.items() if not isinstance(kind, _Added)}
    if not required <= set(obj) <= set(schema):
        diff = sorted((set(obj) - set(schema)) | (required - set(obj)), key=str)
        raise ReportError(f"report payload: {where or 'top level'}: unexpected or missing field {diff[0]!r}")
    for key, kind in schema.items():
        if key in obj:
            _check_value(
                obj[key], kind.kind if isinstance(kind, _Added) else kind, f"{where}.{key}" if where else key
            )


def check_payload(payload: object) -> dict[str, Any]:
    _check_map(payload, _SCHEMA, "")
    assert isinstance(payload, dict)
    if payload["format"] != FORMAT:
        raise ReportError(f"report payload: format: expected {FORMAT!r}, found {payload['format']!r}")
    if (problem := check_record(payload["collateral"])) is not None:
        raise ReportError(f"report payload: {problem}")
    for i, item in enumerate(payload["inputs"]):
        _check_map(item, _INPUT, f"inputs[{i}]")
        if item["encrypted"] is not None:
            _check_map(item["encrypted"], _ENCRYPTED, f"inputs[{i}].encrypted")
    _check_enums(payload)
    for i, item in enumerate(payload["policy"]["signatures"]):
        _check_map(item, _SIGNATURE, f"policy.signatures[{i}]")
    for i, item in enumerate(payload["policy"]["signers"]):
        _check_map(item, _SIGNER, f"policy.signers[{i}]")
    for i, item in enumerate(payload["events"]):
        _check_map(item, _EVENT, f"events[{i}]")
    _check_containment(payload["containment"])
    run = payload["run"]
    if not all(isinstance(a, str) for a in run["command"]):
        raise ReportError("report payload: run.command: expected text")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in run["env"].items()):
        raise ReportError("report payload: run.env: expected text names and values")
    if payload["decision"]["verdict"] not in ("run", "abort"):
        raise ReportError("report payload: decision.verdict: expected 'run' or 'abort'")
    if not all(isinstance(r, str) for r in payload["decision"]["reasons"]):
        raise ReportError("report payload: decision.reasons: expected text")
    for key in payload["timestamps"]:
        try:
            parse_utc(payload["timestamps"][key])
        except ValueError as exc:
            raise ReportError(f"report payload: timestamps.{key}: not an RFC 3339 UTC time") from exc
    return payload


def _check_enums(payload: dict[str, Any]) -> None:
    for i, item in enumerate(payload["inputs"]):
        if item.get("staging", "copy") not in STAGING_MODES:
            raise ReportError(f"report payload: inputs[{i}].staging: expected one of {STAGING_MODES}")
    wipe = payload["wipe"]
    if wipe is not None and wipe.get("method", "overwrite") not in WIPE_METHODS:
        raise ReportError(f"report payload: wipe.method: expected one of {WIPE_METHODS}")


def _check_containment(record: dict[str, Any] | None) -> None:
    if record is None:
        return
    for key in ("namespaces", "devices"):
        if not all(isinstance(v, str) for v in record[key]):
            raise ReportError(f"report payload: containment.{key}: expected text")
    if record["isolation"] not in ("namespaces", "none", "oci"):
        raise ReportError(f"report payload: containment.isolation: unknown {record['isolation']!r}")


@dataclass(frozen=True)
class Report:
    raw: bytes
    envelope: cose.Sign1
    payload: dict[str, Any]
    chain: list[x509.Certificate]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def signed_at(self) -> dt.datetime:
        return parse_utc(self.payload["timestamps"]["finished"])


def parse_report(raw: bytes) -> Report:
    """Decode and structurally check a report; signatures are checked by loader.report.verify."""
    envelope = cose.decode_sign1(raw)
    payload = cose.decode_cbor(envelope.payload, "report payload", canonical=True)
    check_payload(payload)
    chain = [_certificate(der, i) for i, der in enumerate(envelope.x5chain)]
    return Report(raw, envelope, payload, chain)


def _certificate(der: bytes, index: int) -> x509.Certificate:
    """One x5chain certificate. Neither this loader nor its CA issues a serial number below 1
    (RFC 5280 4.1.2.2), so such a certificate is a clean format error here, not a library
    deprecation warning on stderr. (Vendor chains, AMD's serial-0 VCEKs, are certs.chain's.)"""
    from certs.chain import serial_warnings_quiet

    try:
        with serial_warnings_quiet():
            cert = x509.load_der_x509_certificate(der)
            serial = cert.serial_number
    except (ValueError, x509.InvalidVersion) as exc:
        raise ReportError(f"report: x5chain[{index}]: not a DER certificate ({exc})") from exc
    if serial < 1:
        raise ReportError(f"report: x5chain[{index}]: expected a positive serial number, found {serial}")
    return cert
